"""The progress bar of every long command: Rich, on stderr (stdout stays for tables and JSON)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .render import err_console


class ProgressBar:
    """A context manager counting work items; does nothing when ``enabled`` is false.

    ``transient`` bars vanish when done (the profile and regress tables follow them);
    ``show_remaining`` adds an estimate of the time left (evaluations over thousands of images).
    The ``on_*`` methods are the case callbacks of ``profile`` and ``regress``.
    """

    def __init__(self, label: str = "preparing", total: int | None = None, *, enabled: bool = True,
                 transient: bool = True, show_remaining: bool = False) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.transient = transient
        self.show_remaining = show_remaining
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn()]
            if self.show_remaining:
                columns.append(TimeRemainingColumn())
            self._progress = Progress(*columns, console=err_console, transient=self.transient)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update(self, description: str | None = None, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description, total=total)

    # Callbacks of a run over cases (anything with ``label`` and ``upsampler``).
    def on_cases(self, cases: list[Any]) -> None:
        self.update(description="measuring", total=len(cases))

    def on_start(self, case: Any) -> None:
        self.update(description=f"{case.label} {case.upsampler}")

    def on_done(self, case: Any, record: dict[str, Any]) -> None:
        self.advance()

    # Callbacks of interleaved timing rounds (``lda-bench profile --rounds``), after the cases.
    def on_rounds(self, steps: int) -> None:
        self.update(description="timing in rounds", total=(self.total or 0) + steps)

    def on_round(self, case: Any, index: int) -> None:
        self.update(description=f"round {index + 1}: {case.label} {case.upsampler}")
        self.advance()
