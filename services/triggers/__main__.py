"""`python -m services.triggers` (or `crm triggers worker`): run a triggers worker."""

from __future__ import annotations

from collections.abc import Callable

import faust

from services.common.faustapp import worker_main
from services.triggers.app import create_app
from services.triggers.config import load_trigger_config
from services.triggers.settings import TriggerSettings


def prepare(settings: TriggerSettings) -> Callable[[], faust.App]:
    """Load the rules first (a bad one stops start-up naming its key); the app comes later."""
    config = load_trigger_config(settings.trigger_rules_file)
    return lambda: create_app(settings, config)


def main() -> None:
    worker_main("triggers", TriggerSettings, prepare)


if __name__ == "__main__":
    main()
