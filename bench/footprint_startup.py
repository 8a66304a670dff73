"""Item 5, footprint: the time from `make up` to the first accepted job (dependencies already
installed), and the resident memory of each process of the local stack when idle. (The
footprint under the load of item 3 is taken by the throughput bench with bench.footprint's
RssSampler.)

Method, startup. Each repeat runs the real `make up` from the repository's root in a fresh
stack folder (`KILN_STACK_DIR`), on ports that are free (every `KILN_<NAME>_PORT`), with the
installed Kafka jars (`KILN_KAFKA_LIBS_DIR`, so no jar copy is timed), timestamps its output
lines as they stream (the phases: `uv sync` done, Kafka ready, Triton up, every service
ready, make exited; and Triton's models ready, polled from here since Triton answers before
its models are loaded), then POSTs a zero-delay sandbox job with the demo sandbox key of the
folder's demo.env until it is answered 202: the headline is launch → that 202. The job is then
polled until it completed (the first completed job, for information). `make down` with the
same environment stops the stack and the folder is deleted.

Comparison: the Celery baseline (bench/baselines/celery_pipeline) from cold, the same way:
a Triton server of its own (the same PyTriton server and start code as the stack's), then
Redis, the endpoint and the worker (`CeleryBaseline.start`), an account, and the same POST
until 202. Kiln's number includes `uv sync` (part of `make up`) and Kafka; the row "Triton's
models ready → first accepted job" compares what each pipeline adds after the models it uses
are ready on its model server (the same server, loading the same models, in both): for Kiln,
all eleven (its worker serves them all); for the baseline, which runs sandbox jobs only, the
sandbox model.
The baseline's repeats are interleaved with Kiln's.

Method, idle footprint. The shared bench stack (`ctx.kiln()`, started by this bench if no
other started it) is sampled every 0.5 s for a few seconds with nothing to do: RSS per
component (its process group), PSS in the note. The baseline's Redis, endpoint and worker are
sampled the same way after each of its startups, for the "total without triton" row.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.context import BenchContext
from bench.footprint import RssSampler, RssSummary, rss_measurements, stack_processes
from bench.kiln_stack import sandbox_job
from bench.results import Measurement
from kiln_modelhost.contract import ALL_MODELS, SANDBOX_MODEL
from tests.stack_support import (
    REPO,
    SERVICES,
    LocalStack,
    StackPorts,
    read_env_file,
    shared_kafka_libs,
)

BENCH = "startup"
MAKE_TIMEOUT_S = 300.0
ACCEPT_TIMEOUT_S = 60.0
COMPLETE_TIMEOUT_S = 60.0
IDLE_SETTLE_S = 2.0

# Phases of `make up`, from the lines make and stack.py print (the last matching line counts).
PHASES: dict[str, re.Pattern[str]] = {
    "uv sync done": re.compile(r"^uv run python deploy/local/stack\.py up"),
    "Kafka ready": re.compile(r"^kafka: ready on "),
    "Triton up": re.compile(r"^triton: ready on "),  # the server answers; models load after
    "services ready": re.compile(rf"^({'|'.join(SERVICES)})(-\d+)?: ready on "),
}


MODELS_READY = "Triton's models ready"


class ModelReadyWatch:
    """Polls a Triton server (HTTP port) from now until each of `models` is ready (by default
    all of them: PyTriton loads Kiln's eleven one after another, the sandbox fifth, and Kiln's
    worker is ready once they all are; the Celery baseline waits for the sandbox alone):
    `ready_at` is then that time.monotonic(), else NaN. Triton answers /v2/health/ready before
    it loaded any model, and each pipeline waits for the models it uses, so this is the phase
    that matters."""

    def __init__(
        self, http_port: int, models: Sequence[str] = ALL_MODELS, interval_s: float = 0.25
    ) -> None:
        self.urls = [f"http://127.0.0.1:{http_port}/v2/models/{m}/ready" for m in models]
        self.interval_s = interval_s
        self.ready_at = float("nan")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="model-ready", daemon=True)

    def start(self) -> ModelReadyWatch:
        self._thread.start()
        return self

    def _poll(self) -> None:
        waiting = list(self.urls)
        with httpx.Client(timeout=2.0) as client:
            while not self._done.is_set():
                for url in list(waiting):
                    try:
                        if client.get(url).status_code == 200:
                            waiting.remove(url)
                    except httpx.HTTPError:
                        break
                if not waiting:
                    self.ready_at = time.monotonic()
                    break
                self._done.wait(self.interval_s)
        self._done.set()

    def wait(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)


@dataclass
class Startup:
    """One cold start, times in seconds from the launch."""

    accepted_s: float
    phases_s: dict[str, float] = field(default_factory=dict)
    completed_s: float = float("nan")
    accepted_status: str = ""
    down_s: float = float("nan")
    # Times Triton's server restarted because loading its models failed (PyTriton's start-up
    # race under load; see kiln_modelhost.server.serve): slow starts come from these.
    triton_load_failures: int = 0


class StartupError(RuntimeError):
    pass


# ------------------------------------------------------------------------------ Kiln


def make_env(root: Path, ports: Any) -> dict[str, str]:
    """The environment of `make up`/`make down` for a stack in `root` on `ports`."""
    env = {
        k: v
        for k, v in os.environ.items()
        # not this process's ports, nor the flags of a `make bench` that runs this one
        if not re.fullmatch(r"KILN_\w+_PORT", k) and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    env["KILN_STACK_DIR"] = str(root)
    for port_field in dataclasses.fields(StackPorts):
        env[StackPorts.env_name(port_field.name)] = str(getattr(ports, port_field.name))
    libs = shared_kafka_libs()
    if libs is not None:
        env["KILN_KAFKA_LIBS_DIR"] = str(libs)
    return env


def _stream(
    proc: subprocess.Popen[str],
    started: float,
    lines: list[tuple[float, str]],
    echo: Callable[[str], None],
) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        at = time.monotonic() - started
        line = raw.rstrip("\n")
        lines.append((at, line))
        if "GET /readyz" not in line:  # a failed start quotes a log full of them
            echo(f"  [{at:5.1f} s] {line}")


def first_accepted(
    url: str, key: str, deadline_s: float, client: httpx.Client
) -> tuple[float, str, str]:
    """POST a sandbox job until one is answered 202: (time.monotonic(), job id, status)."""
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = client.post(
                f"{url}/jobs", json=sandbox_job(0.0), headers={"Authorization": f"Bearer {key}"}
            )
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 202:
                data = response.json().get("data", {})
                return time.monotonic(), str(data.get("id", "")), str(data.get("status", ""))
            last = f"{response.status_code}: {response.text[:200]}"
        time.sleep(0.1)
    raise StartupError(f"no job was accepted within {deadline_s:.0f} s (last answer {last})")


def wait_completed(
    url: str, key: str, job_id: str, deadline_s: float, client: httpx.Client
) -> float:
    """Poll a Kiln job until it is completed: time.monotonic() then, or NaN."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            response = client.get(
                f"{url}/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}
            )
        except httpx.HTTPError:
            time.sleep(0.05)
            continue
        if response.status_code == 200:
            status = response.json()["data"]["status"]
            if status == "completed":
                return time.monotonic()
            if status in ("failed", "canceled"):
                return float("nan")
        time.sleep(0.05)
    return float("nan")


def _triton_load_failures(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count("loading the models failed")
    except OSError:
        return 0


def _diagnostics(logs: Path, lines: int = 12) -> str:
    """The warnings and errors at the end of the stack's logs (a failed start says why)."""
    found: list[str] = []
    for log in sorted(logs.glob("*.log")):
        try:
            text = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [line[:300] for line in text if re.search(r"WARNING|ERROR|Error|attempt", line)]
        if hits:
            found.append(f"{log.name}:\n" + "\n".join(hits[-lines:]))
    return "\n".join(found)


def make(target: str, env: Mapping[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", target],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def kiln_startup(root: Path, echo: Callable[[str], None]) -> Startup:
    """`make up` in a fresh `root`, until the first accepted job; then `make down`."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    ports = StackPorts.free()
    env = make_env(root, ports)
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    proc = subprocess.Popen(
        ["make", "up"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    reader = threading.Thread(target=_stream, args=(proc, started, lines, echo), daemon=True)
    reader.start()
    models = ModelReadyWatch(ports.triton_http).start()
    try:
        try:
            code = proc.wait(timeout=MAKE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise StartupError(f"make up did not finish within {MAKE_TIMEOUT_S:.0f} s") from None
        reader.join(10)
        exited = time.monotonic() - started
        if code != 0:
            tail = "\n".join(line for _, line in lines if "GET /readyz" not in line)
            raise StartupError(
                f"make up exited {code}:\n{tail[-2000:]}\n{_diagnostics(root / 'logs')}"
            )
        demo = read_env_file(root / "demo.env")
        url, key = demo["KILN_API_URL"], demo["KILN_DEMO_SANDBOX_KEY"]
        with httpx.Client(timeout=30.0) as client:
            accepted_at, job_id, status = first_accepted(url, key, ACCEPT_TIMEOUT_S, client)
            completed_at = wait_completed(url, key, job_id, COMPLETE_TIMEOUT_S, client)
        result = Startup(
            accepted_s=accepted_at - started,
            completed_s=completed_at - started,
            accepted_status=status,
        )
        for phase, pattern in PHASES.items():
            hits = [at for at, line in lines if pattern.search(line)]
            if hits:
                result.phases_s[phase] = hits[-1]
        result.phases_s["make up exited"] = exited
        result.phases_s[MODELS_READY] = models.ready_at - started
        result.triton_load_failures = _triton_load_failures(root / "logs" / "triton.log")
    finally:
        models.stop()
        down_started = time.monotonic()
        try:
            done = make("down", env, 120.0)
            if done.returncode != 0:
                echo(f"startup: make down exited {done.returncode}: {done.stdout[-500:]}")
        finally:
            down_s = time.monotonic() - down_started
            shutil.rmtree(root, ignore_errors=True)
    result.down_s = down_s
    return result


# ------------------------------------------------------------------------------ baseline


def baseline_available() -> bool:
    return (REPO / "bench" / "baselines" / "celery_pipeline" / "launcher.py").exists()


def baseline_startup(
    root: Path, echo: Callable[[str], None], idle_s: float
) -> tuple[Startup, dict[str, RssSummary]]:
    """The Celery baseline from cold (its own Triton first), until the first accepted job;
    then its idle footprint for `idle_s`; then everything is stopped."""
    from bench.baselines.celery_pipeline.launcher import CeleryBaseline

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    triton = LocalStack(root / "triton", StackPorts.free(), sandbox_delay_ms=0, echo=echo)
    baseline = CeleryBaseline(root / "celery", f"127.0.0.1:{triton.ports.triton_grpc}", echo=echo)
    try:
        started = time.monotonic()
        triton.start_triton()
        triton_up = time.monotonic()
        # the baseline runs sandbox jobs only: it waits for that model alone
        models = ModelReadyWatch(triton.ports.triton_http, models=(SANDBOX_MODEL,)).start()
        models.wait(MAKE_TIMEOUT_S)
        baseline.start()
        ready = time.monotonic()
        key = baseline.create_account(credits=1000)
        with httpx.Client(timeout=30.0) as client:
            accepted_at, _, status = first_accepted(baseline.url, key, ACCEPT_TIMEOUT_S, client)
        result = Startup(
            accepted_s=accepted_at - started,
            phases_s={
                "Triton up": triton_up - started,
                MODELS_READY: models.ready_at - started,
                "baseline ready": ready - started,
            },
            accepted_status=status,
            triton_load_failures=_triton_load_failures(triton.log_file("triton")),
        )
        time.sleep(IDLE_SETTLE_S)
        sampler = RssSampler({n: [pid] for n, pid in baseline.processes().items()}, pss=True)
        with sampler:
            time.sleep(idle_s)
        return result, sampler.summary()
    finally:
        try:
            baseline.stop()
        finally:
            # Thrown away next, and not measured: killed, not stopped (a Triton still loading
            # its other models takes its whole stop grace).
            triton.down(discard=True)
            shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------ the bench


def idle_footprint(ctx: BenchContext, idle_s: float) -> dict[str, RssSummary]:
    stack = ctx.kiln()
    time.sleep(IDLE_SETTLE_S)
    sampler = RssSampler(stack_processes(stack.local), pss=True)
    with sampler:
        time.sleep(idle_s)
    return sampler.summary()


def _seconds(runs: list[Startup], pick: Callable[[Startup], float]) -> list[float]:
    return [pick(run) for run in runs]


def run(ctx: BenchContext) -> None:
    idle_s: float = ctx.size(2.0, 10.0)
    kiln_runs: list[Startup] = []
    base_runs: list[Startup] = []
    base_idle: list[dict[str, RssSummary]] = []
    failures: list[str] = []
    with_baseline = baseline_available()
    if not with_baseline:
        ctx.report.note_limit(BENCH, "no Celery baseline (bench/baselines/celery_pipeline)")
    if shared_kafka_libs() is None:
        ctx.report.note_limit(BENCH, "no installed Kafka jars: make up's times include them")
    for repeat in range(ctx.repeats):
        ctx.echo(f"startup: make up, run {repeat + 1}/{ctx.repeats}")
        try:
            kiln = kiln_startup(ctx.workdir / f"startup-kiln-{repeat}", ctx.echo)
        except StartupError as exc:
            # A failed start is a result too: reported, and the other runs go on.
            failures.append(str(exc))
            ctx.echo(f"startup: make up FAILED: {exc}")
            ctx.report.note_limit(BENCH, f"make up run {repeat + 1} failed: {exc}")
            continue
        kiln_runs.append(kiln)
        phases = ", ".join(f"{name} {at:.1f}" for name, at in kiln.phases_s.items())
        ctx.echo(
            f"startup: Kiln first job accepted ({kiln.accepted_status}) "
            f"{kiln.accepted_s:.1f} s after make up; completed {kiln.completed_s:.1f} s; "
            f"phases (s): {phases}; make down {kiln.down_s:.1f} s; Triton model-load "
            f"failures {kiln.triton_load_failures}"
        )
        if with_baseline:
            ctx.echo(f"startup: Celery baseline, run {repeat + 1}/{ctx.repeats}")
            try:
                base, idle = baseline_startup(
                    ctx.workdir / f"startup-celery-{repeat}", ctx.echo, idle_s
                )
            except Exception as exc:  # reported like Kiln's failed starts
                ctx.echo(f"startup: baseline start FAILED: {exc}")
                ctx.report.note_limit(BENCH, f"baseline start {repeat + 1} failed: {exc}")
                continue
            base_runs.append(base)
            base_idle.append(idle)
            ctx.echo(
                f"startup: baseline first job accepted {base.accepted_s:.1f} s after start "
                f"(Triton's models ready {base.phases_s[MODELS_READY]:.1f} s, model-load "
                f"failures {base.triton_load_failures})"
            )
    if kiln_runs:
        ctx.report.add(startup_measurements(kiln_runs, base_runs, len(failures)))

    kiln_idle = idle_footprint(ctx, idle_s)
    ctx.echo(
        "startup: idle RSS (MiB): "
        + ", ".join(f"{name} {s.median_mib:.0f}" for name, s in kiln_idle.items())
    )
    ctx.report.add(
        rss_measurements(
            BENCH,
            "RSS idle",
            [kiln_idle],
            comparison=base_idle or None,
            comparison_name="Celery baseline (redis, api, worker)",
        )
    )
    if not kiln_runs:
        raise StartupError(f"every make up failed ({len(failures)} runs)")


def _failures(runs: list[Startup]) -> str:
    return "/".join(str(run.triton_load_failures) for run in runs)


def startup_measurements(
    kiln: list[Startup], base: list[Startup], failed: int = 0
) -> list[Measurement]:
    statuses = sorted({run.accepted_status for run in kiln})
    headline = Measurement(
        bench=BENCH,
        metric="make up → first accepted job",
        unit="s",
        kiln=_seconds(kiln, lambda r: r.accepted_s),
        note="fresh stack folder, dependencies and Kafka jars installed, includes uv sync; "
        f"first job answered 202 with status {'/'.join(statuses)}; Triton restarts after a "
        f"failed model load per run: {_failures(kiln)}"
        + (f", baseline {_failures(base)}" if base else "")
        + (f"; {failed} more make up run(s) FAILED (see the limits)" if failed else ""),
    )
    after_triton = Measurement(
        bench=BENCH,
        metric="Triton's models ready → first accepted job",
        unit="s",
        kiln=_seconds(kiln, lambda r: r.accepted_s - r.phases_s[MODELS_READY]),
        note="what the pipeline adds once its model server has loaded the models. Not like "
        "for like: make up starts Kiln's services while Triton loads its models (inference is "
        "ready once they are), the baseline's launcher starts Redis, endpoint and worker only "
        "after they are loaded",
    )
    if base:
        name = "Celery baseline from cold (Triton, Redis, API, worker)"
        headline.comparison_name = name
        headline.comparison = _seconds(base, lambda r: r.accepted_s)
        after_triton.comparison_name = name
        after_triton.comparison = _seconds(base, lambda r: r.accepted_s - r.phases_s[MODELS_READY])
    out = [headline, after_triton]
    for phase in (*PHASES, MODELS_READY, "make up exited"):
        out.append(
            Measurement(
                bench=BENCH,
                metric=f"make up → {phase}",
                unit="s",
                kiln=[run.phases_s.get(phase, float("nan")) for run in kiln],
                note="phases of the headline: when stack.py's line arrived"
                if phase in PHASES
                else "phases of the headline: polled /v2/models/sandbox/ready every 0.25 s"
                if phase == MODELS_READY
                else "phases of the headline",
            )
        )
    out.append(
        Measurement(
            bench=BENCH,
            metric="make up → first completed job",
            unit="s",
            kiln=_seconds(kiln, lambda r: r.completed_s),
            note="the first accepted job (zero-delay sandbox), polled until completed",
        )
    )
    out.append(
        Measurement(
            bench=BENCH,
            metric="make down",
            unit="s",
            kiln=_seconds(kiln, lambda r: r.down_s),
            note="stops the five services, Triton and Kafka",
        )
    )
    return out
