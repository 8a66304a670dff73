"""API keys and account sessions: `/api/v1/keys` (session auth) and `/api/v1/auth/token`."""
