"""Webhooks: account endpoints, the default secret, the `v1a` public key, the delivery log."""
