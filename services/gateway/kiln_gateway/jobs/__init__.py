"""Jobs: `/api/v1/jobs` (create, quote, list, count, get, cancel, live events), for API keys."""
