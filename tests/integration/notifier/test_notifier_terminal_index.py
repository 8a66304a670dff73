"""One terminal webhook per job and target, held by the database, on SQLite and PostgreSQL: the
migrations build exactly the notifier's tables (the partial unique index included); a job's
second end, recorded here or by another member, adds no terminal delivery to a target that has
one and claims nothing, nor does a message recorded again; migration 0004 refuses a database
that already holds two, changing nothing."""

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from kiln_notifier import repository
from kiln_notifier.deliveries import DeliveryTarget
from kiln_notifier.migrate import downgrade_connection, upgrade_connection
from kiln_notifier.tables import JOB_WEBHOOK_URL, make_tables
from kiln_runtime.migrations import current_revision
from tests.integration.schema_support import schema_differences

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TABLES = make_tables()
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
TARGETS = [
    DeliveryTarget(endpoint_id="we_1", url="https://hooks.example/a"),
    DeliveryTarget(endpoint_id=JOB_WEBHOOK_URL, url="https://hooks.example/job"),
]


def add_end(
    connection: sa.Connection,
    *,
    webhook_id: str,
    kind: str,
    targets: list[DeliveryTarget] = TARGETS,
) -> list[Any]:
    """A job's end as a member adds it: nothing is read first, the database skips what is
    recorded already (also when another member recorded it a moment before)."""
    return repository.add_deliveries(
        connection,
        TABLES,
        webhook_id=webhook_id,
        account_id="acct_1",
        job_id="job_1",
        event_type=kind,
        payload="{}",
        targets=targets,
        trace_id="",
        now=NOW,
        claim_until=lambda _t: NOW,
    )


def terminal_rows(engine: sa.Engine) -> list[tuple[str, str]]:
    deliveries = TABLES.deliveries
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(deliveries.c.endpoint_id, deliveries.c.event_type)
            .where(deliveries.c.job_id == "job_1")
            .order_by(deliveries.c.endpoint_id)
        )
        return [(row.endpoint_id, row.event_type) for row in rows]


def test_the_migrations_build_exactly_the_tables(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        upgrade_connection(connection)
    with engine.connect() as connection:
        assert current_revision(connection) == "0005"
        assert schema_differences(connection, TABLES.metadata) == []
        indexes = {i["name"]: i for i in sa.inspect(connection).get_indexes("deliveries")}
    assert indexes["uq_deliveries_job_terminal"]["unique"]


def test_a_second_member_adds_no_second_terminal_delivery(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        upgrade_connection(connection)
    with engine.begin() as connection:
        first = add_end(connection, webhook_id="evt_failed", kind="job.failed")
    assert len(first) == 2
    with engine.begin() as connection:
        second = add_end(connection, webhook_id="evt_completed", kind="job.completed")
    assert second == []  # nothing recorded, so nothing to send
    assert terminal_rows(engine) == [("", "job.failed"), ("we_1", "job.failed")]
    with engine.begin() as connection:  # a non-terminal event of the job is not held back
        progress = add_end(connection, webhook_id="evt_progress", kind="job.progress")
    assert [claim.endpoint_id for claim in progress] == ["we_1", ""]


def test_the_migration_refuses_two_terminal_deliveries_of_one_job(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        upgrade_connection(connection, "0003")
    for webhook_id, kind in (("evt_failed", "job.failed"), ("evt_completed", "job.completed")):
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO deliveries (id, webhook_id, account_id, job_id, endpoint_id, "
                    "url, event_type, payload, status, attempts, trace_id, created_at) VALUES "
                    "(:id, :webhook_id, 'acct_1', 'job_1', 'we_1', 'https://hooks.example/a', "
                    ":kind, '{}', 'delivered', 1, '', :now)"
                ),
                {"id": f"dlv_{webhook_id}", "webhook_id": webhook_id, "kind": kind, "now": NOW},
            )
    with pytest.raises(RuntimeError, match=r"1 job\(s\).*job_1 → we_1"):
        with engine.begin() as connection:
            upgrade_connection(connection)
    with engine.connect() as connection:
        assert current_revision(connection) == "0003"
    assert len(terminal_rows(engine)) == 2


def test_each_target_keeps_the_end_recorded_for_it_first(engine: sa.Engine) -> None:
    """Only the targets that already have a terminal delivery are skipped; the others get
    this end (an endpoint added between the two ends, say)."""
    with engine.begin() as connection:
        upgrade_connection(connection)
    with engine.begin() as connection:
        add_end(connection, webhook_id="evt_failed", kind="job.failed", targets=TARGETS[:1])
    with engine.begin() as connection:
        second = add_end(connection, webhook_id="evt_completed", kind="job.completed")
    assert [claim.endpoint_id for claim in second] == [JOB_WEBHOOK_URL]
    assert terminal_rows(engine) == [("", "job.completed"), ("we_1", "job.failed")]


def test_the_migration_goes_down_and_up_again(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        upgrade_connection(connection)
    with engine.begin() as connection:
        downgrade_connection(connection, "0003")
    with engine.connect() as connection:
        names = {i["name"] for i in sa.inspect(connection).get_indexes("deliveries")}
    assert "uq_deliveries_job_terminal" not in names
    with engine.begin() as connection:
        upgrade_connection(connection)
    with engine.connect() as connection:
        assert current_revision(connection) == "0005"


def test_a_message_recorded_again_adds_nothing(engine: sa.Engine) -> None:
    """A redelivered event the inbox no longer remembers (or a test event sent again with its
    test id): the same webhook id and targets."""
    with engine.begin() as connection:
        upgrade_connection(connection)
    with engine.begin() as connection:
        assert len(add_end(connection, webhook_id="evt_progress", kind="job.progress")) == 2
    with engine.begin() as connection:
        assert add_end(connection, webhook_id="evt_progress", kind="job.progress") == []
