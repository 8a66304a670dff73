"""Fixtures shared by the integration tests of every service."""

from collections.abc import Iterator

import pytest

from tests.integration.billing.postgres_cluster import PostgresCluster, find_pg_bin


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
