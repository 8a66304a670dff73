"""`python -m kiln_gateway.secrets_rotation`: every webhook signing secret the gateway stores,
sealed again with the first key of KILN_SECRETS_KEYS (docs/deploy.md, "Rotating the secrets
key"), beside the running service.

It seals again what an older key of the list sealed: the accounts' default secrets, the
endpoints' secrets, and the unsent `webhooks.endpoint_changed` events of the outbox (a row is
rewritten only while it still holds what was read: the relay may send and delete it meanwhile).
A secret that a replica of the release before sealed secrets wrote in clear (during a rolling
upgrade) is sealed. What the first key seals already is left alone: a second run changes
nothing. Exit status 1 when some secret no key opens (its ids are printed; no secret is)."""

from __future__ import annotations

from sqlalchemy import Engine, select, update

from kiln_contracts import decode, encode
from kiln_contracts.v1.webhooks_pb2 import WebhookEndpointChanged
from kiln_crypto import SealedSecretError, SecretsKeyring
from kiln_gateway.tables import MESSAGING, Base
from kiln_runtime.sealed_columns import (
    RotationReport,
    reseal_column,
    run_rotation,
    write_transaction,
)

ENDPOINT_CHANGED = "webhooks.endpoint_changed"


def reseal_outbox(engine: Engine, keyring: SecretsKeyring) -> RotationReport:
    """The unsent endpoint changes of the outbox whose secret an older key sealed (or that
    carry it in clear), rewritten with the secret sealed by the first key."""
    outbox = MESSAGING.outbox
    report = RotationReport()
    with write_transaction(engine) as connection:
        rows = connection.execute(
            select(outbox.c.id, outbox.c.payload).where(outbox.c.topic == ENDPOINT_CHANGED)
        ).all()
        for row_id, payload in rows:
            event = decode(bytes(payload))
            message = event.message
            if not isinstance(message, WebhookEndpointChanged):
                continue
            if message.secret:
                message.sealed_secret = keyring.seal(message.secret)
                message.ClearField("secret")
                report.sealed_from_clear += 1
            elif not message.sealed_secret:
                continue
            elif keyring.sealed_with_first_key(message.sealed_secret):
                report.current += 1
                continue
            else:
                try:
                    message.sealed_secret = keyring.reseal(message.sealed_secret)
                except SealedSecretError:
                    report.unreadable.append(f"outbox row {row_id}")
                    continue
                report.resealed += 1
            event.envelope.payload = message.SerializeToString(deterministic=True)
            connection.execute(
                update(outbox)
                .where(outbox.c.id == row_id, outbox.c.payload == payload)
                .values(payload=encode(event.envelope))
            )
    return report


def rotate_secrets(engine: Engine, keyring: SecretsKeyring) -> dict[str, RotationReport]:
    """What the command does, by place."""
    return {
        "accounts' default secrets": reseal_column(
            engine,
            Base.metadata.tables["accounts"],
            id_column="id",
            sealed_column="sealed_webhook_secret",
            legacy_column="default_webhook_secret",
            keyring=keyring,
        ),
        "endpoints' secrets": reseal_column(
            engine,
            Base.metadata.tables["webhook_endpoints"],
            id_column="id",
            sealed_column="sealed_secret",
            legacy_column="secret",
            keyring=keyring,
            version_column="revision",
        ),
        "unsent endpoint changes": reseal_outbox(engine, keyring),
    }


def main() -> int:
    from kiln_gateway.config import GatewaySettings

    settings = GatewaySettings()
    return run_rotation(
        "kiln_gateway.secrets_rotation",
        settings.database_url,
        settings.secrets_keys.get_secret_value(),
        SecretsKeyring.from_setting,
        rotate_secrets,
    )


if __name__ == "__main__":
    raise SystemExit(main())
