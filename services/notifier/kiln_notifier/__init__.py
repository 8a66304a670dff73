"""Kiln notifier: turns finished jobs into signed webhook deliveries (Standard Webhooks), keeps
the delivery log, and retries on a schedule until a 2xx or the schedule runs out."""
