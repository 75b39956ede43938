"""Errors every command raises for the user, and the exit codes they map to.

* :class:`UsageError` (exit 2): the request itself is wrong (unknown names, bad options, missing
  files, an output that exists); raised before any work starts.
* :class:`CommandError` (exit 1): the work failed (a checkpoint that does not fit, an unreadable
  image, a case that cannot run).

Both carry their exit code, so a command line maps any of them to one line on stderr and the
right status without a table of exception types.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


class CommandError(Exception):
    """A failure while doing the work (exit code 1)."""

    exit_code = EXIT_FAILED


class UsageError(CommandError, ValueError):
    """Bad user input (exit code 2), found before any work starts."""

    exit_code = EXIT_USAGE


class OutputExistsError(UsageError, FileExistsError):
    """An output file exists and the caller did not pass ``force``."""
