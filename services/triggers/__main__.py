"""`python -m services.triggers` (or `crm triggers worker`): run a triggers worker."""

from __future__ import annotations

import sys

from services.common.errors import ConfigError
from services.common.faustapp import start_worker
from services.common.settings import load_settings
from services.triggers.app import create_app
from services.triggers.config import load_trigger_config
from services.triggers.settings import TriggerSettings


def main() -> None:
    try:
        settings = load_settings(TriggerSettings)
        config = load_trigger_config(settings.trigger_rules_file)
    except ConfigError as exc:
        sys.exit(f"triggers: {exc}")
    start_worker("triggers", settings, lambda: create_app(settings, config), settings.triggers_web_port)


if __name__ == "__main__":
    main()
