"""Errors of an evaluation run, with the exit code the command line gives them."""

from __future__ import annotations


class EvalError(Exception):
    """The run failed (exit code 1): a checkpoint that does not fit, an unreadable image, ..."""

    exit_code = 1


class EvalUsageError(EvalError):
    """The request itself is wrong (exit code 2): unknown names, missing paths, conflicting options."""

    exit_code = 2
