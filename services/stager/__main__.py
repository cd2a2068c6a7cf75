"""`python -m services.stager` (or `crm stager worker`): run a stager worker."""

from __future__ import annotations

import os
from collections.abc import Callable

import faust

from services.common.faustapp import worker_main
from services.stager.app import create_app
from services.stager.config import load_rules
from services.stager.settings import StagerSettings


def prepare(settings: StagerSettings) -> Callable[[], faust.App]:
    """Load the rules first (a bad one stops start-up naming its key); the app comes later."""
    rules = load_rules(settings.stage_rules_file, dict(os.environ))
    return lambda: create_app(settings, rules)


def main() -> None:
    worker_main("stager", StagerSettings, prepare)


if __name__ == "__main__":
    main()
