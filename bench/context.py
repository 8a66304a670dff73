"""What every bench gets: the run's sizes (smoke or full), the report it adds to, a work folder,
and the shared Kiln stack and webhook receiver (started on first use, stopped at the end)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench.kiln_stack import KilnBenchStack
from bench.receiver import WebhookReceiver
from bench.results import Report

_T = TypeVar("_T")


@dataclass
class BenchConfig:
    smoke: bool = False
    # Repeated runs per measurement: the table shows their median and spread.
    repeats: int = 3
    profile: bool = True


@dataclass
class BenchContext:
    config: BenchConfig
    report: Report
    workdir: Path
    echo: Callable[[str], None] = print
    _kiln: KilnBenchStack | None = field(default=None, init=False)
    _receiver: WebhookReceiver | None = field(default=None, init=False)

    @property
    def smoke(self) -> bool:
        return self.config.smoke

    @property
    def repeats(self) -> int:
        return 1 if self.config.smoke else self.config.repeats

    def size(self, smoke: _T, full: _T) -> _T:
        """The smoke run's value or the full run's."""
        return smoke if self.config.smoke else full

    def kiln(self) -> KilnBenchStack:
        """The shared bench stack, started the first time a bench asks for it."""
        if self._kiln is None:
            stack = KilnBenchStack(self.workdir / "kiln", echo=self.echo)
            started = time.monotonic()
            try:
                stack.up()
            except BaseException:
                stack.down()
                raise
            self.echo(f"bench: Kiln stack up in {time.monotonic() - started:.1f} s")
            self._kiln = stack
        return self._kiln

    def receiver(self) -> WebhookReceiver:
        if self._receiver is None:
            self._receiver = WebhookReceiver().start()
        return self._receiver

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None
        if self._kiln is not None:
            self._kiln.down()
            self._kiln = None
