"""The platform's Ed25519 key for `v1a` webhook signatures (Standard Webhooks, asymmetric).

The signed content is the same as for `v1`: `{webhook-id}.{webhook-timestamp}.{body}`; the
signature goes into `webhook-signature` as `v1a,<base64 signature>`, space-separated from the
`v1,<base64 HMAC>` one. Receivers check it against the public key the gateway serves at
`GET /api/v1/webhooks/public-key` (the same key as `KILN_WEBHOOK_SIGNING_KEY`, public half).
"""

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def load_signing_key(text: str) -> Ed25519PrivateKey:
    """The private key from base64 (standard or URL-safe, padded or not) of its 32 raw bytes."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        raw = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the webhook signing key is not base64") from exc
    if len(raw) != 32:
        raise ValueError("the webhook signing key must be 32 bytes (an Ed25519 private key)")
    return Ed25519PrivateKey.from_private_bytes(raw)


def sign_v1a(key: Ed25519PrivateKey, *, webhook_id: str, timestamp: int, body: str) -> str:
    signature = key.sign(f"{webhook_id}.{timestamp}.{body}".encode())
    return "v1a," + base64.b64encode(signature).decode("ascii")
