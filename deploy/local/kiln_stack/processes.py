"""Component processes: spawn, pidfiles, process groups, stop."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kiln_stack.components import KAFKA, TRITON, split_instance
from kiln_stack.errors import StackError
from kiln_stack.layout import StackLayout
from kiln_stack.ports import StackPorts, port_accepts

STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 40


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        file.seek(max(0, size - 64 * 1024))
        data = file.read().decode("utf-8", "replace")
    return "\n".join(data.splitlines()[-lines:])


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of a process group."""
    if not _has_proc():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


def _remove_triton_shm(pid: int) -> None:
    """Triton's Python backend names its shared memory after the PyTriton process
    (`/dev/shm/pytrtion<pid>-...`); a killed server leaves it behind."""
    for region in Path("/dev/shm").glob(f"pytrtion{pid}-*"):
        with contextlib.suppress(OSError):
            region.unlink()


class ProcessesMixin(StackLayout):
    """Each component runs in a process group of its own, recorded in run/<name>.pid, logging
    to logs/<name>.log; stopping signals the whole group."""

    def log_file(self, name: str) -> Path:
        return self.logs_dir / (f"{name}.out" if name == KAFKA else f"{name}.log")

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _marker(self, name: str) -> str:
        if name == KAFKA:
            return str(self.kafka_properties)
        if name == TRITON:
            return "kiln_modelhost"
        return f"kiln_{split_instance(name)[0]}"

    def _alive(self, name: str, pid: int) -> bool:
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None
        if not _has_proc():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        stat = _proc_stat(pid)
        if stat is None or stat[0] == "Z":
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return False
        return self._marker(name) in cmdline

    def _pidfile_pid(self, name: str) -> int | None:
        try:
            return int(self.pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def pid(self, name: str) -> int | None:
        """The pid of a running component of this stack, or None (a stale pidfile is removed)."""
        pid = self._pidfile_pid(name)
        if pid is None:
            return None
        if self._alive(name, pid):
            return pid
        if not self._orphaned_group(name, pid):  # else kept, for down to stop what is left
            self.pid_file(name).unlink(missing_ok=True)
        return None

    def _orphaned_group(self, name: str, pgid: int) -> bool:
        """Whether processes of a component outlive its dead leader (say, tritonserver after
        its PyTriton parent was killed): members of its group that name it or its leader."""
        if not _has_proc():
            return False
        signs = (self._marker(name), f"pytrtion{pgid}-")
        for member in group_members(pgid):
            try:
                cmdline = Path(f"/proc/{member}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if any(sign in cmdline.decode(errors="replace") for sign in signs):
                return True
        return False

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    def _reap_orphans(self, name: str) -> None:
        """Stop what is left of a component whose leader died, before starting it again."""
        recorded = self._pidfile_pid(name)
        if recorded is not None and not self._alive(name, recorded):
            if self._orphaned_group(name, recorded):
                self._echo(f"{name}: its process {recorded} died; stopping what it left running")
                self._stop([name])

    def _check_ports_free(self, name: str, ports: Mapping[str, int]) -> None:
        for env_field, port in ports.items():
            if port_accepts(port):
                raise StackError(
                    f"cannot start {name}: port {port} is already taken by another program "
                    f"(stop it, or choose another port with {StackPorts.env_name(env_field)})"
                )

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
        for folder in (self.logs_dir, self.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file(name)
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n===== {stamp} stack.py starts {name}: {shlex.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.repo,
                start_new_session=True,
            )
        self._procs[name] = proc
        self.pid_file(name).write_text(f"{proc.pid}\n")
        return proc.pid

    def _stop(
        self, names: Sequence[str], sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S
    ) -> list[str]:
        """Signal each component's process group, wait `grace_s`, then SIGKILL what is left.

        Returns the names that were running."""
        running: dict[str, int] = {}
        for name in names:
            recorded = self._pidfile_pid(name)
            pid = self.pid(name)
            if pid is None and recorded is not None and self._orphaned_group(name, recorded):
                pid = recorded
            if pid is not None:
                running[name] = pid
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        left = self._wait_groups_gone(running, grace_s)
        if left:
            self._echo(f"{', '.join(left)}: still running after {grace_s:.0f} s, sending SIGKILL")
            for name in left:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running[name], signal.SIGKILL)
            left = self._wait_groups_gone({name: running[name] for name in left}, 10.0)
            if left:
                raise StackError(f"could not stop {', '.join(left)}")
        if TRITON in running:
            _remove_triton_shm(running[TRITON])
        for name in names:
            self.pid_file(name).unlink(missing_ok=True)
            proc = self._procs.pop(name, None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)
        return list(running)

    def _wait_groups_gone(self, groups: Mapping[str, int], timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = []
            for name, pgid in groups.items():
                proc = self._procs.get(name)
                if proc is not None:
                    proc.poll()  # reap our own child, or it stays a zombie of the group
                if group_members(pgid):
                    left.append(name)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)

    def _gone(self, name: str) -> str:
        proc = self._procs.get(name)
        if proc is not None and proc.returncode is not None:
            return f"exited with code {proc.returncode}"
        return "is not running"

    def _died(self, name: str, what: str) -> StackError:
        return StackError(
            f"{name} {what}; the end of {self.log_file(name)}:\n{tail(self.log_file(name))}"
        )
