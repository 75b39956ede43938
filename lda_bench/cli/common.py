"""What every command's Typer shell shares: turning the library's errors into one line and an
exit code."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer

from lda_bench.core.errors import EXIT_USAGE, CommandError
from lda_bench.core.render import print_error


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on stderr; the exit to raise with ``code``."""
    print_error(message)
    return typer.Exit(code)


@contextmanager
def reported_errors(code: int | None = None) -> Iterator[None]:
    """Library errors as one line on stderr and their exit code: a :class:`CommandError` carries
    its own, other ``ValueError``/``FileExistsError`` (bad names or options caught by
    ``upsamplers``) count as usage errors. ``code`` replaces them all (the regression gate's
    set-up errors exit 3)."""
    try:
        yield
    except CommandError as exc:
        raise fail(str(exc), exc.exit_code if code is None else code) from None
    except (ValueError, FileExistsError) as exc:
        raise fail(str(exc), EXIT_USAGE if code is None else code) from None
