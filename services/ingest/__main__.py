"""`python -m services.ingest`: run the ingest HTTP service."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from services.common.errors import ConfigError
from services.common.settings import load_settings
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings


def main() -> None:
    try:
        settings = load_settings(IngestSettings)
    except ConfigError as exc:
        sys.exit(f"ingest: {exc}")
    logging.basicConfig(level=settings.logging_level())
    web.run_app(create_app(settings), host=settings.ingest_host, port=settings.ingest_port, print=None)


if __name__ == "__main__":
    main()
