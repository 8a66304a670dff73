"""Webhook signing secrets sealed with the operator's keyring (KILN_SECRETS_KEYS,
kiln_crypto.sealed_secrets): `accounts.sealed_webhook_secret` and `webhook_endpoints.sealed_secret`
take the secrets that `accounts.default_webhook_secret` and `webhook_endpoints.secret` held in
clear, which are emptied (kept, empty, for one release: tables.py says why), and the unsent
`webhooks.endpoint_changed` events of the outbox carry their secret sealed.

The keyring comes from the process that runs the migration (the gateway at start, with its
settings) or, from `python -m kiln_gateway.migrate` and Alembic's command line, from
KILN_SECRETS_KEYS; it is needed only when there is a secret to seal (or, going down, to open).

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-08
"""

import os
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op

from kiln_contracts import decode, encode
from kiln_contracts.v1.webhooks_pb2 import WebhookEndpointChanged
from kiln_crypto import SecretsKeyring

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PAGE = 500
_TOPIC = "webhooks.endpoint_changed"

_accounts = sa.table(
    "accounts",
    sa.column("id", sa.String),
    sa.column("default_webhook_secret", sa.String),
    sa.column("sealed_webhook_secret", sa.Text),
)
_endpoints = sa.table(
    "webhook_endpoints",
    sa.column("id", sa.String),
    sa.column("secret", sa.String),
    sa.column("sealed_secret", sa.Text),
)
_outbox = sa.table(
    "outbox",
    sa.column("id", sa.BigInteger),
    sa.column("topic", sa.String),
    sa.column("payload", sa.LargeBinary),
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


def _move(table: sa.TableClause, source: str, target: str, change: Callable[[str], str]) -> None:
    """Each row with a non-empty `source`: `target` = change(source), `source` emptied. Pages
    by id, so that a large table is not read at once."""
    bind = op.get_bind()
    id_column, source_column = table.c.id, table.c[source]
    after = ""
    while True:
        rows = bind.execute(
            sa.select(id_column, source_column)
            .where(source_column.is_not(None), source_column != "", id_column > after)
            .order_by(id_column)
            .limit(_PAGE)
        ).all()
        for row in rows:
            bind.execute(
                table.update()
                .where(id_column == row[0])
                .values({target: change(row[1]), source: ""})
            )
        if len(rows) < _PAGE:
            return
        after = rows[-1][0]


def _rewrite_outbox(change: Callable[[WebhookEndpointChanged], bool]) -> None:
    """The unsent endpoint changes of the outbox, each changed in place by `change` (which says
    whether it changed anything)."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_outbox.c.id, _outbox.c.payload).where(_outbox.c.topic == _TOPIC)
    ).all()
    for row in rows:
        event = decode(bytes(row.payload))
        message = event.message
        if not isinstance(message, WebhookEndpointChanged) or not change(message):
            continue
        event.envelope.payload = message.SerializeToString(deterministic=True)
        bind.execute(
            _outbox.update().where(_outbox.c.id == row.id).values(payload=encode(event.envelope))
        )


def upgrade() -> None:
    op.add_column("accounts", sa.Column("sealed_webhook_secret", sa.Text(), nullable=True))
    op.add_column("webhook_endpoints", sa.Column("sealed_secret", sa.Text(), nullable=True))
    keyring = _keyring()
    _move(_accounts, "default_webhook_secret", "sealed_webhook_secret", lambda s: keyring().seal(s))
    _move(_endpoints, "secret", "sealed_secret", lambda s: keyring().seal(s))

    def seal_event(message: WebhookEndpointChanged) -> bool:
        if not message.secret:
            return False
        message.sealed_secret = keyring().seal(message.secret)
        message.ClearField("secret")
        return True

    _rewrite_outbox(seal_event)


def downgrade() -> None:
    keyring = _keyring()
    _move(_accounts, "sealed_webhook_secret", "default_webhook_secret", lambda s: keyring().open(s))
    _move(_endpoints, "sealed_secret", "secret", lambda s: keyring().open(s))

    def open_event(message: WebhookEndpointChanged) -> bool:
        if not message.sealed_secret:
            return False
        message.secret = keyring().open(message.sealed_secret)
        message.ClearField("sealed_secret")
        return True

    _rewrite_outbox(open_event)
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.drop_column("sealed_secret")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("sealed_webhook_secret")
