"""SIGTERM handled like Ctrl-C: what CI runners and ``timeout`` send must not lose measurements.

:func:`install` makes SIGTERM raise :class:`Terminated`, a ``KeyboardInterrupt``, so every loop
that keeps its finished cases on Ctrl-C keeps them on SIGTERM too; :func:`interrupted_exit_code`
then gives the shell's convention: 143 (128 + SIGTERM) after SIGTERM, 130 (128 + SIGINT) after
Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from .errors import EXIT_INTERRUPTED

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143

_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised where Ctrl-C's KeyboardInterrupt would be."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Terminated()


def install() -> None:
    """Route SIGTERM to :class:`Terminated` (only possible in the main thread; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def terminated() -> bool:
    """Whether SIGTERM has arrived in this process."""
    return signal.SIGTERM in _received


def interrupted_exit_code() -> int:
    """143 after SIGTERM, else 130 (Ctrl-C)."""
    return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
