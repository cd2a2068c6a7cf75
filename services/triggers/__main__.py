"""`python -m services.triggers` (or `crm triggers worker`): run a triggers worker."""

from __future__ import annotations

import asyncio
import sys

from services.common.errors import ConfigError
from services.common.faustapp import run_worker
from services.common.resilience import Health, retry
from services.common.settings import load_settings
from services.common.topics import ensure_topics
from services.triggers.app import create_app
from services.triggers.config import load_trigger_config
from services.triggers.settings import TriggerSettings


def main() -> None:
    try:
        settings = load_settings(TriggerSettings)
        config = load_trigger_config(settings.trigger_rules_file)
    except ConfigError as exc:
        sys.exit(f"triggers: {exc}")
    # a broker that is away at start is waited for, as during work
    asyncio.run(retry(lambda: ensure_topics(settings.kafka_bootstrap), Health("triggers")))
    app = create_app(settings, config)
    run_worker(app, settings.log_level, settings.triggers_web_port)


if __name__ == "__main__":
    main()
