"""Where a process spends its CPU, by py-spy: sample running processes (no restart, no
instrumentation), then sum the samples by function and by package.

Only the thread holding the GIL is sampled (`--gil`): an asyncio service waiting in epoll takes
no samples, and neither does a thread waiting for the GIL or blocked in a system call that
released it (a thread in `fsync`, which py-spy otherwise counts as busy). A
sample is still time, not CPU: on a busy machine the GIL holder waiting for a core counts too,
so `cpu_share` (samples over duration × rate) overstates the share of a core the process used
(billing at 16 in flight: 0.21 of a core by /proc, 0.32 by py-spy with `--gil`, 0.64 without).
Native code that runs without the GIL (SQLite's stepping, a few percent of the machine) is left
out. A leaf in `asyncio.runners` under uvloop is the loop's own C code (I/O, HTTP parsing).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_SITE = re.compile(r"(?:site|dist)-packages/(?P<pkg>[A-Za-z0-9_]+)")
_STDLIB = re.compile(r"/lib/python3\.\d+/(?P<mod>[A-Za-z0-9_]+)")


def py_spy() -> str:
    """The py-spy binary next to this interpreter (a dev dependency), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    if here.exists():
        return str(here)
    found = shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed (uv sync installs it with the dev group)")
    return found


def package_of(file: str) -> str:
    """A frame's file → a short owner: a site-packages package, `stdlib:<module>`, or the
    Kiln package (kiln_gateway, ...)."""
    if match := _SITE.search(file):
        return match.group("pkg")
    kiln = re.search(r"(kiln_[a-z_]+)/", file)
    if kiln:
        return kiln.group(1)
    if match := _STDLIB.search(file):
        return f"stdlib:{match.group('mod')}"
    return file.rsplit("/", 1)[-1] or "?"


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for part in stack.split(";"):
        match = _FRAME.match(part.strip())
        if match:
            frames.append((match.group("func"), match.group("file")))
        else:
            frames.append((part.strip(), ""))
    return frames


def _idle(func: str, file: str) -> bool:
    return file.endswith("selectors.py") and func.endswith("select")


@dataclass
class Profile:
    name: str
    samples: int
    duration_s: float
    rate_hz: int
    by_function: Counter[str] = field(default_factory=Counter)  # self time, leaf frames
    by_package: Counter[str] = field(default_factory=Counter)  # self time by owner
    by_kiln_frame: Counter[str] = field(default_factory=Counter)  # innermost Kiln frame

    @property
    def cpu_share(self) -> float:
        expected = self.duration_s * self.rate_hz
        return self.samples / expected if expected else 0.0

    def top(self, counter: Counter[str], n: int = 6) -> list[tuple[str, float]]:
        if not self.samples:
            return []
        return [(key, 100 * count / self.samples) for key, count in counter.most_common(n)]

    def summary(self, n: int = 6) -> str:
        """One paragraph: CPU share, the packages and the Kiln code paths that used it."""
        if not self.samples:
            return f"{self.name}: no samples (idle or not a Python process)"
        packages = ", ".join(f"{k} {v:.0f}%" for k, v in self.top(self.by_package, n))
        paths = ", ".join(f"{k} {v:.0f}%" for k, v in self.top(self.by_kiln_frame, n))
        functions = ", ".join(f"{k} {v:.0f}%" for k, v in self.top(self.by_function, n))
        return (
            f"{self.name}: {100 * self.cpu_share:.0f}% of a core while sampled. "
            f"By package (self time): {packages}. By innermost Kiln frame: {paths}. "
            f"Hottest functions: {functions}."
        )


def parse_raw(name: str, text: str, duration_s: float, rate_hz: int) -> Profile:
    """py-spy's `--format raw` output (collapsed stacks: `f1;f2;...;leaf count`)."""
    profile = Profile(name, 0, duration_s, rate_hz)
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        func, file = frames[-1]
        if _idle(func, file):
            continue
        profile.samples += count
        profile.by_function[f"{func} ({package_of(file)})"] += count
        profile.by_package[package_of(file)] += count
        kiln = next(
            (f"{f} ({package_of(p)})" for f, p in reversed(frames) if "kiln_" in p),
            "(no Kiln frame)",
        )
        profile.by_kiln_frame[kiln] += count
    return profile


def record_argv(pid: int, duration_s: float, rate_hz: int, out: Path | str) -> list[str]:
    """py-spy's command line for sampling `pid` into `out` as collapsed stacks: the GIL holder
    only, without pausing the process."""
    return [
        py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(duration_s))),
        "--rate", str(rate_hz), "--format", "raw", "--output", str(out), "--nonblocking",
        "--full-filenames", "--gil",
    ]  # fmt: skip


def record(pids: Mapping[str, int], duration_s: float, rate_hz: int = 50) -> dict[str, Profile]:
    """Sample each process (name → pid) at once for `duration_s`; non-blocking, so the
    processes are not paused while sampled."""
    with tempfile.TemporaryDirectory(prefix="kiln-pyspy-") as folder:
        running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for name, pid in pids.items():
            out = Path(folder) / f"{name}.txt"
            argv = record_argv(pid, duration_s, rate_hz, out)
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            running[name] = (proc, out)
        profiles: dict[str, Profile] = {}
        for name, (proc, out) in running.items():
            try:
                _, stderr = proc.communicate(timeout=duration_s + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
            text = out.read_text() if out.exists() else ""
            profile = parse_raw(name, text, duration_s, rate_hz)
            if not text and proc.returncode:
                profile.by_package[f"py-spy failed: {stderr.decode(errors='replace')[-200:]}"] = 0
            profiles[name] = profile
        return profiles
