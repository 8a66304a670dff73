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

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

from kiln_contracts import decode, encode
from kiln_contracts.v1.webhooks_pb2 import WebhookEndpointChanged
from kiln_crypto import SecretsKeyring
from kiln_runtime.migration_ops import lazy_keyring, move_values

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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
    keyring = lazy_keyring(SecretsKeyring.from_setting)
    move_values(
        _accounts,
        "id",
        "default_webhook_secret",
        "sealed_webhook_secret",
        lambda s: keyring().seal(s),
    )
    move_values(_endpoints, "id", "secret", "sealed_secret", lambda s: keyring().seal(s))

    def seal_event(message: WebhookEndpointChanged) -> bool:
        if not message.secret:
            return False
        message.sealed_secret = keyring().seal(message.secret)
        message.ClearField("secret")
        return True

    _rewrite_outbox(seal_event)


def downgrade() -> None:
    keyring = lazy_keyring(SecretsKeyring.from_setting)
    move_values(
        _accounts,
        "id",
        "sealed_webhook_secret",
        "default_webhook_secret",
        lambda s: keyring().open(s),
    )
    move_values(_endpoints, "id", "sealed_secret", "secret", lambda s: keyring().open(s))

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
