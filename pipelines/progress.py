"""Progress of a cohort run: a rich bar per stage on a terminal, plain log lines otherwise.

On a TTY (``sys.stderr.isatty()``) each stage gets a ``rich.progress`` bar
written to stderr; in CI or under a pipe, progress goes through ``logging``
at most every 10 % per stage (and at the end), so logs stay short. Only
pseudonymous study keys and stage names are ever shown.
"""
from __future__ import annotations

import logging
import sys
from typing import IO, Any

__all__ = ["RunProgress", "render_summary"]

log = logging.getLogger(__name__)


class RunProgress:
    """Per-stage progress of one run.

    Parameters
    ----------
    totals : dict of str to int
        Tasks to run per stage (skipped study-stages are not counted).
    stream : file, optional
        Where the rich bars go (default ``sys.stderr``); bars only when it is a TTY.
    """

    def __init__(self, totals: dict[str, int], *, stream: IO[str] | None = None) -> None:
        self.totals = {k: v for k, v in totals.items() if v}
        self.done = {k: 0 for k in self.totals}
        self.failed = {k: 0 for k in self.totals}
        self._next_log = {k: 0.1 for k in self.totals}
        self._stream = stream if stream is not None else sys.stderr
        self._rich: Any = None
        self._task_ids: dict[str, Any] = {}
        if self.totals and getattr(self._stream, "isatty", lambda: False)():
            from rich.console import Console  # noqa: PLC0415 - only on a terminal
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                                  console=Console(file=self._stream))
            for stage, total in self.totals.items():
                self._task_ids[stage] = self._rich.add_task(stage, total=total, failed=0)

    def __enter__(self) -> "RunProgress":
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def advance(self, stage: str, *, failed: bool = False) -> None:
        """Count one finished task of ``stage``."""
        if stage not in self.totals:
            return
        self.done[stage] += 1
        self.failed[stage] += int(failed)
        if self._rich is not None:
            self._rich.update(self._task_ids[stage], advance=1, failed=self.failed[stage])
            return
        frac = self.done[stage] / self.totals[stage]
        if frac >= self._next_log[stage] or self.done[stage] == self.totals[stage]:
            while self._next_log[stage] <= frac:
                self._next_log[stage] += 0.1
            log.info("stage %s: %d/%d done, %d failed", stage, self.done[stage], self.totals[stage],
                     self.failed[stage])


def render_summary(per_stage: dict[str, dict[str, int]], failed: list[tuple[str, str, str]], seconds: float,
                   *, stream: IO[str] | None = None) -> None:
    """Show per-stage done/skipped/failed counts and every failure's reason.

    A rich table on a TTY; otherwise log lines (one per stage and per failure).
    """
    stream = stream if stream is not None else sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from rich.console import Console  # noqa: PLC0415
        from rich.table import Table

        table = Table(title=f"petcohort run ({seconds:.1f} s)")
        for col in ("stage", "done", "skipped", "failed"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for stage, c in per_stage.items():
            table.add_row(stage, str(c["done"]), str(c["skipped"]), str(c["failed"]))
        console = Console(file=stream)
        console.print(table)
        if failed:
            fails = Table(title="failures")
            for col in ("study", "stage", "reason"):
                fails.add_column(col)
            for row in failed:
                fails.add_row(*row)
            console.print(fails)
        return
    log.info("run finished in %.1f s", seconds)
    for stage, c in per_stage.items():
        log.info("stage %-10s done %d, skipped %d, failed %d", stage, c["done"], c["skipped"], c["failed"])
    for study, stage, reason in failed:
        log.warning("failed: %s %s %s", study, stage, reason)
