"""Serving a service's FastAPI app with the shared settings."""

import uvicorn
from fastapi import FastAPI

from kiln_runtime.logs import configure_logging
from kiln_runtime.settings import ServiceSettings


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    configure_logging(settings.service_name, settings.log_level)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
    )
