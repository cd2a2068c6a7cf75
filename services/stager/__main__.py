"""`python -m services.stager` (or `crm stager worker`): run a stager worker."""

from __future__ import annotations

import asyncio
import os
import sys

from services.common.errors import ConfigError
from services.common.faustapp import run_worker
from services.common.resilience import Health, retry
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
    # a broker that is away at start is waited for, as during work
    asyncio.run(retry(lambda: ensure_topics(settings.kafka_bootstrap), Health("stager")))
    app = create_app(settings, rules)
    run_worker(app, settings.log_level, settings.stager_web_port)


if __name__ == "__main__":
    main()
