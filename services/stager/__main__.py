"""`python -m services.stager` (or `crm stager worker`): run a stager worker."""

from __future__ import annotations

import asyncio
import os
import sys

from services.common.errors import ConfigError
from services.common.settings import load_settings
from services.common.topics import ensure_topics
from services.stager.app import create_app
from services.stager.config import load_rules
from services.stager.settings import StagerSettings


def main() -> None:
    try:
        settings = load_settings(StagerSettings)
        rules = load_rules(settings.stage_rules_file, dict(os.environ))
    except ConfigError as exc:
        sys.exit(f"stager: {exc}")
    # Faust does not create source topics; the topic table is created (idempotently) first.
    asyncio.run(ensure_topics(settings.kafka_bootstrap))
    app = create_app(settings, rules)
    level = "warn" if settings.log_level in ("warn", "warning") else settings.log_level
    sys.argv = [sys.argv[0], "worker", "--loglevel", level, "--web-port", str(settings.stager_web_port)]
    app.main()


if __name__ == "__main__":
    main()
