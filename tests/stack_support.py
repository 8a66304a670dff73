"""The local stack for tests: the code of `deploy/local/stack.py` (its package `kiln_stack`).

An end-to-end fixture starts a whole stack of its own (Kafka, Triton, the five services) in a
temporary folder on free ports, next to any stack a developer already runs:

    from tests.stack_support import LocalStack, StackPorts, load_env_file

    @pytest.fixture(scope="session")
    def stack(tmp_path_factory):
        root = tmp_path_factory.mktemp("kiln-stack")
        local = LocalStack(root=root, ports=StackPorts.free(), sandbox_delay_ms=300)
        try:
            local.up()                                   # or: with started_stack(root) as s:
            yield load_env_file(root / "demo.env")
        finally:
            local.down()

    local.stop_service("billing", signal.SIGKILL)        # chaos: kill one service...
    local.start_service("billing"); local.wait_ready(["billing"])   # ...and bring it back

`LocalStack(..., database="postgresql")` runs the services on a PostgreSQL cluster of the stack's
own (Debian's server, initdb/pg_ctl); `local.database_url("billing")` is a service's database
either way.

`LocalStack` here is the one of `deploy/local/kiln_stack` (the package behind stack.py), except
that it uses the developer's folder of Kafka jars (`<repo>/.kiln/kafka/libs`, or
`KILN_KAFKA_LIBS_DIR`) when that one is installed, so that a test stack does not copy them
again; `make test` installs them first with `stack.py install`. `stack` is that package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCAL_DIR = REPO / "deploy" / "local"
STACK_PY = LOCAL_DIR / "stack.py"

# kiln_stack is not an installed package: deploy/local holds it next to stack.py.
if str(LOCAL_DIR) not in sys.path:
    sys.path.insert(0, str(LOCAL_DIR))

import kiln_stack  # noqa: E402

stack: Any = kiln_stack

DATABASES: tuple[str, ...] = stack.DATABASES
StackPorts: Any = stack.StackPorts
StackError: Any = stack.StackError
ComponentStatus: Any = stack.ComponentStatus
SERVICES: tuple[str, ...] = stack.SERVICES
free_port: Any = stack.free_port
group_members: Any = stack.group_members
tail: Any = stack.tail
read_env_file: Any = stack.read_env_file
load_env_file: Any = stack.read_env_file


def shared_kafka_libs() -> Path | None:
    """The developer's folder of Kafka jars when it holds them (else None)."""
    configured = os.environ.get("KILN_KAFKA_LIBS_DIR")
    root = Path(os.environ.get("KILN_STACK_DIR") or REPO / ".kiln")
    libs = Path(configured) if configured else root / "kafka" / "libs"
    return libs if any(libs.glob(stack.KAFKA_JAR_GLOB)) else None


class LocalStack(stack.LocalStack):  # type: ignore[misc]
    """kiln_stack's LocalStack, sharing the installed Kafka jars by default."""

    def __init__(
        self,
        root: Path,
        ports: Any = None,
        sandbox_delay_ms: int = 200,
        extra_env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        if options.get("kafka_libs") is None:
            options["kafka_libs"] = shared_kafka_libs()
        super().__init__(root, ports or StackPorts.free(), sandbox_delay_ms, extra_env, **options)


@dataclass(frozen=True)
class Demo:
    """The demo account that `up` bootstrapped (the content of demo.env)."""

    api_url: str
    admin_token: str
    account_id: str
    email: str
    password: str
    live_key: str
    sandbox_key: str

    @classmethod
    def from_env(cls, values: Mapping[str, str]) -> Demo:
        return cls(
            api_url=values["KILN_API_URL"],
            admin_token=values["KILN_ADMIN_TOKEN"],
            account_id=values["KILN_DEMO_ACCOUNT_ID"],
            email=values["KILN_DEMO_EMAIL"],
            password=values["KILN_DEMO_PASSWORD"],
            live_key=values["KILN_DEMO_LIVE_KEY"],
            sandbox_key=values["KILN_DEMO_SANDBOX_KEY"],
        )


@dataclass(frozen=True)
class RunningStack:
    local: LocalStack
    env: dict[str, str]  # demo.env

    @property
    def demo(self) -> Demo:
        return Demo.from_env(self.env)


@contextmanager
def started_stack(
    root: Path,
    *,
    ports: Any = None,
    sandbox_delay_ms: int = 200,
    extra_env: Mapping[str, str] | None = None,
    database: str = "sqlite",
) -> Iterator[RunningStack]:
    """`up` a whole stack in `root` on free ports, yield it, and `down` it whatever happens: at
    once, for its data is thrown away (unless `KILN_KEEP_STACK` is set, to look at it after).
    `database="postgresql"`: the services on a PostgreSQL cluster of the stack's own."""
    local = LocalStack(root, ports, sandbox_delay_ms, extra_env, database=database)
    try:
        env = local.up()
        yield RunningStack(local, dict(env))
    finally:
        local.down(discard=not os.environ.get("KILN_KEEP_STACK"))
