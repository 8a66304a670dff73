"""Billing's schema migrations (Alembic). `kiln_billing.migrate.upgrade_database` runs them at
start; `alembic -c services/billing/alembic.ini ...` works on them by hand."""
