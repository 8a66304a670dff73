"""Result downloads: `/api/v1/files/{token}`, no API key needed."""
