"""The local stack's pure parts (deploy/local/kiln_stack): ports from the environment, service
instances, KEY=value files, templates. The processes themselves are exercised by
tests/integration/test_stack_instances.py and every e2e test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stack_support import stack


def test_ports_come_from_kiln_port_variables() -> None:
    env = {"KILN_KAFKA_PORT": "19092", "KILN_TRITON_GRPC_PORT": " 18011 "}
    ports = stack.StackPorts.from_env(env)
    assert (ports.kafka, ports.triton_grpc) == (19092, 18011)
    assert ports.gateway == stack.StackPorts().gateway  # unset: the default
    with pytest.raises(stack.StackError, match="KILN_GATEWAY_PORT"):
        stack.StackPorts.from_env({"KILN_GATEWAY_PORT": "http"})


def test_free_ports_are_distinct_across_stacks_and_outside_the_ephemeral_range() -> None:
    """Two stacks chosen before either starts share no port, and no port is one the kernel
    may hand any program for an outgoing connection or `bind(0)` in the meantime."""
    values = []
    for ports in (stack.StackPorts.free(), stack.StackPorts.free()):
        values += [getattr(ports, name) for name in ports.__dataclass_fields__]
    assert len(set(values)) == len(values)
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert not [port for port in values if low <= port <= high]
    assert all(port > 1024 for port in values)


def test_instance_names() -> None:
    assert stack.instance_name("billing") == "billing"
    assert stack.instance_name("billing", 2) == "billing-2"
    assert stack.split_instance("billing-2") == ("billing", 2)
    assert stack.split_instance("triton") == ("triton", 1)
    assert stack.split_instance("billing-1") == ("billing-1", 1)  # not an instance name
    with pytest.raises(stack.StackError):
        stack.instance_name("kafka")


def test_parse_instances() -> None:
    assert stack.parse_instances("inference=2, billing=3") == {"inference": 2, "billing": 3}
    assert stack.instance_counts({"inference": 2})["gateway"] == 1
    for bad in ("inference", "inference=0", "nobody=2", "inference=two"):
        with pytest.raises(stack.StackError):
            stack.parse_instances(bad)


def test_env_files_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "demo.env"
    values = {"KILN_A": "plain", "KILN_B": "with space and 'quote'", "KILN_C": ""}
    assert stack.write_env_file(path, values, header=["made by a test"])
    assert not stack.write_env_file(path, values, header=["made by a test"])  # unchanged
    assert path.stat().st_mode & 0o077 == 0
    assert stack.read_env_file(path) == values
    assert stack.read_env_file(tmp_path / "missing.env") == {}


def test_render_template_names_what_is_missing(tmp_path: Path) -> None:
    template = tmp_path / "x.properties.in"
    template.write_text("port=@KAFKA_PORT@\ndir=@KAFKA_DATA_DIR@\n")
    assert stack.render_template(template, {"KAFKA_PORT": "1", "KAFKA_DATA_DIR": "/d"}) == (
        "port=1\ndir=/d\n"
    )
    with pytest.raises(stack.StackError, match="KAFKA_DATA_DIR"):
        stack.render_template(template, {"KAFKA_PORT": "1"})


def test_the_secrets_keyring_is_made_once_and_given_to_the_gateway_and_notifier_only(
    tmp_path: Path,
) -> None:
    from kiln_crypto import SecretsKeyring
    from tests.stack_support import LocalStack

    # A stack folder of an earlier release: its secrets.env lacks the keyring.
    stack.write_env_file(tmp_path / "secrets.env", {"KILN_ADMIN_TOKEN": "kept"})
    local = LocalStack(tmp_path, stack.StackPorts.free())
    made = local.secrets()
    assert made["KILN_ADMIN_TOKEN"] == "kept"
    keyring = SecretsKeyring.from_setting(made["KILN_SECRETS_KEYS"])
    assert keyring.open(keyring.seal("whsec_x")) == "whsec_x"
    assert local.secrets() == made  # kept in secrets.env from then on
    for service in stack.SERVICES:
        env = local.service_env(service)
        given = env.get("KILN_SECRETS_KEYS")
        assert given == (made["KILN_SECRETS_KEYS"] if service in ("gateway", "notifier") else None)


def test_a_stack_runs_on_sqlite_unless_told_postgresql(tmp_path: Path) -> None:
    local = stack.LocalStack(tmp_path, stack.StackPorts.free())
    assert local.database == "sqlite"
    assert local.database_url("billing") == f"sqlite:///{tmp_path}/data/billing.db"
    assert local.database_url("billing", 2) == f"sqlite:///{tmp_path}/data/billing.db"  # shared
    assert local.database_url("inference-2") == f"sqlite:///{tmp_path}/data/inference-2.db"
    with pytest.raises(stack.StackError, match="sqlite, postgresql"):
        stack.LocalStack(tmp_path, database="mysql")


def test_the_choice_of_database_is_kept_for_the_next_commands(tmp_path: Path) -> None:
    (tmp_path / "stack.env").write_text("KILN_STACK_DATABASE=postgresql\n")  # what `up` wrote
    assert stack.LocalStack.from_env({"KILN_STACK_DIR": str(tmp_path)}).database == "postgresql"
    told = {"KILN_STACK_DIR": str(tmp_path), "KILN_STACK_DATABASE": "sqlite"}
    assert stack.LocalStack.from_env(told).database == "sqlite"
    assert stack.LocalStack.from_env({"KILN_STACK_DIR": str(tmp_path / "new")}).database == (
        "sqlite"
    )


def test_services_get_plain_postgresql_urls_with_the_password_escaped(tmp_path: Path) -> None:
    server = stack.PostgresServer(
        bin_dir=tmp_path, root=tmp_path, port=54321, user="kiln", password="p:w/@x"
    )
    assert server.url(stack.postgres.database_name("inference-2")) == (
        "postgresql://kiln:p%3Aw%2F%40x@127.0.0.1:54321/inference_2"
    )
    assert server.url("billing", "asyncpg").startswith("postgresql+asyncpg://kiln:")
    trusted = stack.PostgresServer(bin_dir=tmp_path, root=tmp_path, port=5432)
    assert trusted.url() == "postgresql://postgres@127.0.0.1:5432/postgres"


def test_a_free_port_comes_from_the_kernel_when_no_good_port_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import port_for

    def none_left(**_kwargs: object) -> int:
        raise port_for.PortForException("Can't select a port")

    monkeypatch.setattr(port_for, "select_random", none_left)
    port = stack.free_port()
    assert 1024 < port < 65536 and port != stack.free_port()
