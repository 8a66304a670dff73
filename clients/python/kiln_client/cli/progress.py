"""Live progress of a job on stderr: a bar with the status, queue position, reason and the
estimated start while queued; plain lines when stderr is not a terminal."""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from kiln_client.models import JobBase


def describe(job: JobBase) -> str:  # type: ignore[type-arg]
    """`queued #3 (capacity), starts in ~12 s` / `running` / …"""
    if job.status != "queued":
        return job.status
    text = "queued"
    if job.queue_position is not None:
        text += f" #{job.queue_position}"
    if job.queue_reason:
        text += f" ({job.queue_reason})"
    if job.estimated_start_at is not None:
        seconds = (job.estimated_start_at - datetime.now(UTC)).total_seconds()
        text += f", starts in ~{max(0, round(seconds))} s"
    return text


class JobProgress:
    def __init__(self, console: Console, job_id: str) -> None:
        self.console = console
        self.job_id = job_id
        self.live = console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last = ""

    def __enter__(self) -> JobProgress:
        if self.live:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.fields[job]}[/] {task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("submitted", total=1.0, job=self.job_id)
        return self

    def update(self, job: JobBase) -> None:  # type: ignore[type-arg]
        text = describe(job)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=text, completed=job.progress)
        elif text != self._last:
            line = f"{job.id}: {text} {job.progress:.0%}"
            self.console.print(line, markup=False, highlight=False)
        self._last = text

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
