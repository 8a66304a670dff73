"""Fixtures shared by the integration tests of every service."""

from collections.abc import Iterator

import pytest

from tests.integration.billing.postgres_cluster import PostgresCluster, find_pg_bin
from tests.stack_support import LocalStack, StackPorts


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka broker (KRaft, the registry's topics) for the session, in a temporary
    folder on free ports; its bootstrap address."""
    root = tmp_path_factory.mktemp("kiln-kafka")
    local = LocalStack(root=root, ports=StackPorts.free())
    local.start_kafka()
    try:
        local.create_topics()
        yield local.kafka_bootstrap
    finally:
        local.stop_kafka()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the session (Debian's binaries); each test makes its own
    database on it. Skipped where PostgreSQL is not installed."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): the PostgreSQL "
            "half of this test is skipped; `make install` installs Debian's postgresql "
            "(deploy/local/apt-packages.txt)"
        )
    cluster = PostgresCluster.start(bin_dir)
    try:
        yield cluster
    finally:
        cluster.stop()
