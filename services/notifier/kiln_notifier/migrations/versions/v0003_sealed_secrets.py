"""Endpoints' signing secrets sealed with the operator's keyring (KILN_SECRETS_KEYS,
kiln_crypto.sealed_secrets): `endpoints.sealed_secret` takes the secrets that `endpoints.secret`
held in clear, which is emptied (kept, empty, for one release: tables.py says why).

The keyring comes from the process that runs the migration (the notifier at start, with its
settings) or, from `python -m kiln_notifier.migrate` and Alembic's command line, from
KILN_SECRETS_KEYS; it is needed only when there is a secret to seal (or, going down, to open).

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-08
"""

import os
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op

from kiln_crypto import SecretsKeyring

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PAGE = 500

_endpoints = sa.table(
    "endpoints",
    sa.column("endpoint_id", sa.String),
    sa.column("secret", sa.String),
    sa.column("sealed_secret", sa.Text),
)


def _keyring() -> Callable[[], SecretsKeyring]:
    """The keyring, looked for at the first row that needs it."""
    found: list[SecretsKeyring] = []

    def get() -> SecretsKeyring:
        if not found:
            given = context.config.attributes.get("secrets_keyring")
            found.append(
                given
                if given is not None
                else SecretsKeyring.from_setting(os.environ.get("KILN_SECRETS_KEYS", ""))
            )
        return found[0]

    return get


def _move(source: str, target: str, change: Callable[[str], str]) -> None:
    """Each endpoint with a non-empty `source`: `target` = change(source), `source` emptied.
    Pages by id, so that a large table is not read at once."""
    bind = op.get_bind()
    ids, source_column = _endpoints.c.endpoint_id, _endpoints.c[source]
    after = ""
    while True:
        rows = bind.execute(
            sa.select(ids, source_column)
            .where(source_column.is_not(None), source_column != "", ids > after)
            .order_by(ids)
            .limit(_PAGE)
        ).all()
        for row in rows:
            bind.execute(
                _endpoints.update()
                .where(ids == row[0])
                .values({target: change(row[1]), source: ""})
            )
        if len(rows) < _PAGE:
            return
        after = rows[-1][0]


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("sealed_secret", sa.Text(), nullable=True))
    keyring = _keyring()
    _move("secret", "sealed_secret", lambda secret: keyring().seal(secret))


def downgrade() -> None:
    keyring = _keyring()
    _move("sealed_secret", "secret", lambda sealed: keyring().open(sealed))
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("sealed_secret")
