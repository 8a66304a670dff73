"""The model catalog: `/api/v1/models`, for API keys."""
