"""Operator routes (`/api/v1/admin/...`), behind the admin token: accounts, credits, keys."""
