"""The base revision of an A/B gate run, materialised as a temporary ``git worktree``.

:func:`base_tree` checks the revision out (detached) into a fresh temporary folder, yields it, and
removes the worktree, its registration in the repository and the folder afterwards, on a normal
exit, an error and Ctrl-C alike. Nothing is written into the user's checkout except git's
bookkeeping of the worktree, which is pruned again.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lda_bench.core.errors import UsageError

GIT_TIMEOUT_S = 120


class GitError(UsageError):
    """git is missing, the folder is no repository, or the revision does not exist."""


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run ``git -C repo args``; its stdout, stripped. A failure raises :class:`GitError`."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except FileNotFoundError:
        raise GitError("git is not installed (needed by --against)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {' '.join(args)} did not finish in {GIT_TIMEOUT_S} s") from None
    if check and done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
        raise GitError(f"git {' '.join(args)}: {message}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Candidate:
    """The tree measured as the candidate: the working tree of a repository."""

    root: Path
    commit: str | None  # HEAD (None in a repository without commits)
    dirty: bool  # uncommitted changes to tracked files, or untracked files under upsamplers/


def repository_root(start: Path | None = None) -> Path:
    """The top folder of the git repository holding ``start`` (default: the current folder)."""
    where = Path.cwd() if start is None else Path(start)
    try:
        return Path(git(where, "rev-parse", "--show-toplevel"))
    except GitError:
        raise GitError(f"{where} is not inside a git repository; --against compares two revisions of one") from None


def candidate(root: Path) -> Candidate:
    head = git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False) or None
    tracked = git(root, "status", "--porcelain", "--untracked-files=no")
    untracked = git(root, "status", "--porcelain", "--untracked-files=all", "--", "upsamplers")
    return Candidate(root, head, bool(tracked) or any(line.startswith("??") for line in untracked.splitlines()))


def resolve_revision(root: Path, revision: str) -> str:
    """The commit ``revision`` names (any of git's forms: a branch, ``HEAD~1``, a tag, a SHA)."""
    if not revision or revision.startswith("-"):
        raise GitError(f"--against needs a git revision (a branch, tag, SHA or HEAD~1), got {revision!r}")
    commit = git(root, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False)
    if commit:
        return commit
    shallow = git(root, "rev-parse", "--is-shallow-repository", check=False) == "true"
    hint = " (this clone is shallow: fetch more history, e.g. git fetch --unshallow)" if shallow else ""
    raise GitError(f"--against {revision}: no such revision in {root}{hint}")


@contextmanager
def base_tree(root: Path, commit: str, parent: Path) -> Iterator[Path]:
    """``commit`` checked out into a new worktree under ``parent``; removed when the block ends."""
    path = Path(tempfile.mkdtemp(prefix="base-", dir=parent))
    try:
        git(root, "worktree", "add", "--detach", "--force", str(path), commit)
        yield path
    finally:
        git(root, "worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(path, ignore_errors=True)
        git(root, "worktree", "prune", check=False)
