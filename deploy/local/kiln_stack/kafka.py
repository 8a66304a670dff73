"""The stack's Kafka broker (KRaft, one node) and its topics."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kiln_stack.components import KAFKA
from kiln_stack.errors import StackError
from kiln_stack.install import InstallMixin
from kiln_stack.layout import HERE
from kiln_stack.ports import port_accepts
from kiln_stack.processes import STOP_GRACE_S, ProcessesMixin

KAFKA_PROPERTIES_TEMPLATE = HERE / "kafka-server.properties.in"
KAFKA_LOG4J_TEMPLATE = HERE / "kafka-log4j.properties.in"
# C1 only (no C2 JIT): the local broker shares two cores with every service and lives for a
# test, a bench or a working day. C2 compiles Kafka's hot paths on those cores for the first
# minute or more (the broker's CPU per job fell from 2.7 to 1.2 ms over its first minute under
# load); with C1 alone a stack is up about 1 s sooner and its first minute runs faster, for
# about 0.15 ms more per job once C2 would have finished (docs/BENCHMARKS.md, "Kafka with C1
# only"). A cluster's brokers keep the JVM's defaults.
KAFKA_JVM_OPTS = ("-Xms256m", "-Xmx768m", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")
KAFKA_START_TIMEOUT_S = 90.0
TOPICS_TIMEOUT_S = 60.0

_T = TypeVar("_T")


def render_template(template: Path, values: Mapping[str, str]) -> str:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@([A-Z][A-Z0-9_]*)@", text)))
    if left:
        raise StackError(f"{template}: no value for {', '.join(left)}")
    return text


def _run_coro(coro: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run, also from code that already runs inside an event loop (an async fixture)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="stack-coro")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: _T = box["result"]
    return result


class KafkaMixin(ProcessesMixin, InstallMixin):
    """The broker: config from the templates, KRaft storage, start and stop, the topics."""

    def write_kafka_config(self) -> None:
        self.kafka_data.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        properties = render_template(
            KAFKA_PROPERTIES_TEMPLATE,
            {
                "KAFKA_PORT": str(self.ports.kafka),
                "KAFKA_CONTROLLER_PORT": str(self.ports.kafka_controller),
                "KAFKA_DATA_DIR": str(self.kafka_data),
            },
        )
        log4j = render_template(
            KAFKA_LOG4J_TEMPLATE, {"KAFKA_LOG_FILE": str(self.logs_dir / "kafka.log")}
        )
        self.kafka_properties.write_text(properties)
        self.kafka_log4j.write_text(log4j)

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").exists():
            return str(Path(java_home) / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise StackError("java is missing (see deploy/local/apt-packages.txt: run install)")
        return java

    def _java_argv(self, main_class: str, *args: str, jvm: Sequence[str] = ()) -> list[str]:
        return [
            self._java(),
            *jvm,
            f"-Dlog4j.configuration=file:{self.kafka_log4j}",
            "-cp",
            f"{self.kafka_libs}/*",
            main_class,
            *args,
        ]

    def _storage_tool(self, *args: str) -> str:
        argv = self._java_argv("kafka.tools.StorageTool", *args)
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"kafka StorageTool {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def format_kafka_storage(self) -> bool:
        """Format the KRaft log dir unless it already is; returns True when it formatted."""
        if (self.kafka_data / "meta.properties").exists():
            return False
        lines = self._storage_tool("random-uuid").split()
        if not lines:
            raise StackError("kafka StorageTool random-uuid printed nothing")
        cluster_id = lines[-1]
        self._storage_tool("format", "-t", cluster_id, "-c", str(self.kafka_properties))
        self._echo(f"kafka: formatted {self.kafka_data} (cluster id {cluster_id})")
        return True

    def start_kafka(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        self._reap_orphans(KAFKA)
        pid = self.pid(KAFKA)
        if pid is not None:
            self._echo(f"kafka: already running (pid {pid}) on {self.kafka_bootstrap}")
            return
        if not self.kafka_jars_present():
            raise StackError(f"no Kafka jars in {self.kafka_libs}: run `stack.py install` first")
        self._check_ports_free(
            KAFKA, {"kafka": self.ports.kafka, "kafka_controller": self.ports.kafka_controller}
        )
        self.write_kafka_config()
        self.format_kafka_storage()
        argv = self._java_argv("kafka.Kafka", str(self.kafka_properties), jvm=KAFKA_JVM_OPTS)
        pid = self._spawn(KAFKA, argv, self._base_env())
        self._echo(f"kafka: starting (pid {pid}) on {self.kafka_bootstrap}")
        deadline = time.monotonic() + timeout_s
        while not port_accepts(self.ports.kafka):
            if not self._alive(KAFKA, pid):
                self.pid_file(KAFKA).unlink(missing_ok=True)
                raise self._died(
                    KAFKA, f"{self._gone(KAFKA)} during start (see also {self.logs_dir}/kafka.log)"
                )
            if time.monotonic() >= deadline:
                raise self._died(KAFKA, f"did not accept connections within {timeout_s:.0f} s")
            time.sleep(0.3)
        self._echo(f"kafka: ready on {self.kafka_bootstrap}")

    def stop_kafka(self, sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S) -> bool:
        """Stop the broker alone (its data is kept; the services stay up and reconnect when
        it is back). SIGTERM is a controlled shutdown; True if it ran."""
        return bool(self._stop([KAFKA], sig, grace_s))

    def restart_kafka(self, down_s: float = 0.0, sig: int = signal.SIGTERM) -> None:
        """Stop the broker, leave it down `down_s` seconds, and start it again on the same
        ports and data (chaos tests: the services must ride through it)."""
        self.stop_kafka(sig)
        self._echo(f"kafka: stopped (signal {sig}); back in {down_s:.1f} s")
        if down_s > 0:
            time.sleep(down_s)
        self.start_kafka()

    def create_topics(self, timeout_s: float = TOPICS_TIMEOUT_S) -> list[str]:
        """Create the registry's missing topics (retrying while the new broker settles)."""
        from kiln_runtime.topics import ensure_topics

        raw = self._setting("KILN_TOPIC_PARTITIONS")
        partitions = int(raw) if raw else None
        deadline = time.monotonic() + timeout_s
        created: list[str] = []
        problem = "no answer"
        while True:
            try:
                missing = _run_coro(ensure_topics(self.kafka_bootstrap, partitions=partitions))
            except Exception as exc:  # the broker may still be electing its controller
                problem = repr(exc)
            else:
                if not missing:  # every topic of the registry exists
                    break
                created += [name for name in missing if name not in created]
                problem = f"still missing: {', '.join(missing)}"
            if time.monotonic() >= deadline:
                raise StackError(
                    f"could not create the topics on {self.kafka_bootstrap} within "
                    f"{timeout_s:.0f} s ({problem}); see {self.logs_dir / 'kafka.log'}"
                )
            time.sleep(1.0)
        if created:
            self._echo(f"kafka: created topics {', '.join(created)}")
        return created
