"""Kiln scheduler: decides which reserved job runs when, per model pool."""
