"""Shared runtime of the Kiln services: settings, Kafka bus, inbox/outbox, database, metrics,
health, the model catalog, blob storage, signed file tokens and the outbound URL guard."""
