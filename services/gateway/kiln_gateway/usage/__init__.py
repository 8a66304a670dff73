"""Usage: balance and spend, statistics, and the account's event feed (`GET /events`)."""
