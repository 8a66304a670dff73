"""The double-entry ledger: bookings of postings that sum to zero, books per account.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-21

Converts the skeleton's single-entry rows into bookings: a grant moves credits from the
system book `system.grants` to the account's `available`, a revocation back; a reservation
moves `available` to `reserved`; a capture `reserved` to `spent`; a release `reserved` back to
`available`. Zero-amount (sandbox) rows book nothing. The balance cache's `captured` column
becomes `spent`, and a job's charge may now remember an end that came before its submission.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_When = sa.DateTime(timezone=True)

_old_entries = sa.table(
    "ledger_entries",
    sa.column("id", _Id),
    sa.column("account_id", sa.String),
    sa.column("entry_key", sa.String),
    sa.column("kind", sa.String),
    sa.column("job_id", sa.String),
    sa.column("amount_millicredits", sa.BigInteger),
    sa.column("sandbox", sa.Boolean),
    sa.column("created_at", _When),
)
_transactions = sa.table(
    "ledger_transactions",
    sa.column("id", _Id),
    sa.column("account_id", sa.String),
    sa.column("kind", sa.String),
    sa.column("entry_key", sa.String),
    sa.column("job_id", sa.String),
    sa.column("grant_id", sa.String),
    sa.column("amount_millicredits", sa.BigInteger),
    sa.column("created_at", _When),
)
_postings = sa.table(
    "ledger_postings",
    sa.column("transaction_id", _Id),
    sa.column("account_id", sa.String),
    sa.column("book", sa.String),
    sa.column("amount_millicredits", sa.BigInteger),
)

# kind -> (new kind, entry key prefix, from book, to book) for a positive amount.
_MOVES = {
    "reserve": ("reserve", "reserve", "available", "reserved"),
    "capture": ("capture", "settle", "reserved", "spent"),
    "release": ("release", "settle", "reserved", "available"),
}


def _book(
    connection: sa.Connection,
    row: sa.Row[tuple[object, ...]],
    kind: str,
    key: str,
    amount: int,
    source: str,
    target: str,
    grant_id: str | None,
) -> None:
    transaction_id = connection.execute(
        _transactions.insert()
        .values(
            account_id=row.account_id,
            kind=kind,
            entry_key=key,
            job_id=row.job_id,
            grant_id=grant_id,
            amount_millicredits=amount,
            created_at=row.created_at or datetime.now(UTC),
        )
        .returning(_transactions.c.id)
    ).scalar_one()
    if amount == 0:
        return
    connection.execute(
        _postings.insert(),
        [
            {
                "transaction_id": transaction_id,
                "account_id": row.account_id,
                "book": source,
                "amount_millicredits": -amount,
            },
            {
                "transaction_id": transaction_id,
                "account_id": row.account_id,
                "book": target,
                "amount_millicredits": amount,
            },
        ],
    )


def _convert_single_entries(connection: sa.Connection) -> None:
    rows = connection.execute(sa.select(_old_entries).order_by(_old_entries.c.id)).all()
    for row in rows:
        amount = int(row.amount_millicredits)
        if row.kind == "grant":
            grant_id = str(row.entry_key).removeprefix("grant:")
            if amount >= 0:
                _book(connection, row, "grant", row.entry_key, amount, "system.grants",
                      "available", grant_id)  # fmt: skip
            else:
                _book(connection, row, "revoke", row.entry_key, -amount, "available",
                      "system.grants", grant_id)  # fmt: skip
        elif row.kind in _MOVES and amount > 0:
            kind, prefix, source, target = _MOVES[row.kind]
            _book(connection, row, kind, f"{prefix}:{row.job_id}", amount, source, target, None)


def upgrade() -> None:
    op.create_table(
        "ledger_transactions",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("entry_key", sa.String(160), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("grant_id", sa.String(64), nullable=True),
        sa.Column("amount_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _When, nullable=False),
        sa.UniqueConstraint("entry_key", name="uq_ledger_transactions_entry_key"),
    )
    op.create_index("ix_ledger_transactions_account_id", "ledger_transactions", ["account_id"])
    op.create_index("ix_ledger_transactions_job_id", "ledger_transactions", ["job_id"])
    op.create_table(
        "ledger_postings",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column(
            "transaction_id",
            _Id,
            sa.ForeignKey("ledger_transactions.id", name="fk_ledger_postings_transaction"),
            nullable=False,
        ),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("book", sa.String(32), nullable=False),
        sa.Column("amount_millicredits", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_ledger_postings_transaction_id", "ledger_postings", ["transaction_id"])
    op.create_index("ix_ledger_postings_account_book", "ledger_postings", ["account_id", "book"])

    _convert_single_entries(op.get_bind())

    op.drop_index("ix_ledger_entries_job_id", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_account_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("ended_with", sa.String(16), nullable=True))
    with op.batch_alter_table("account_balances") as batch:
        batch.alter_column(
            "captured_millicredits",
            new_column_name="spent_millicredits",
            existing_type=sa.BigInteger(),
            existing_nullable=False,
        )


def downgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("id", _Id, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("entry_key", sa.String(160), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("amount_millicredits", sa.BigInteger(), nullable=False),
        sa.Column("sandbox", sa.Boolean(), nullable=False),
        sa.Column("created_at", _When, nullable=False),
        sa.UniqueConstraint("account_id", "entry_key", name="uq_ledger_entry_key"),
    )
    op.create_index("ix_ledger_entries_account_id", "ledger_entries", ["account_id"])
    op.create_index("ix_ledger_entries_job_id", "ledger_entries", ["job_id"])
    connection = op.get_bind()
    rows = connection.execute(sa.select(_transactions).order_by(_transactions.c.id)).all()
    singles: list[dict[str, object]] = []
    for row in rows:
        amount = int(row.amount_millicredits)
        base = {"account_id": row.account_id, "job_id": row.job_id, "sandbox": False,
                "created_at": row.created_at}  # fmt: skip
        if row.kind in ("grant", "revoke"):
            signed = amount if row.kind == "grant" else -amount
            singles.append({**base, "entry_key": row.entry_key, "kind": "grant",
                            "amount_millicredits": signed})  # fmt: skip
            continue
        kinds = ["reserve", "capture"] if row.kind == "charge" else [row.kind]
        for kind in kinds:
            singles.append({**base, "entry_key": f"{kind}:{row.job_id}", "kind": kind,
                            "amount_millicredits": amount})  # fmt: skip
    if singles:
        connection.execute(_old_entries.insert(), singles)
    with op.batch_alter_table("account_balances") as batch:
        batch.alter_column(
            "spent_millicredits",
            new_column_name="captured_millicredits",
            existing_type=sa.BigInteger(),
            existing_nullable=False,
        )
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("ended_with")
    op.drop_index("ix_ledger_postings_account_book", table_name="ledger_postings")
    op.drop_index("ix_ledger_postings_transaction_id", table_name="ledger_postings")
    op.drop_table("ledger_postings")
    op.drop_index("ix_ledger_transactions_job_id", table_name="ledger_transactions")
    op.drop_index("ix_ledger_transactions_account_id", table_name="ledger_transactions")
    op.drop_table("ledger_transactions")
