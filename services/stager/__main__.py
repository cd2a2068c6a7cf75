"""`python -m services.stager` (or `crm stager worker`): run a stager worker."""

from __future__ import annotations

import os
import sys

from services.common.errors import ConfigError
from services.common.faustapp import start_worker
from services.common.settings import load_settings
from services.stager.app import create_app
from services.stager.config import load_rules
from services.stager.settings import StagerSettings


def main() -> None:
    try:
        settings = load_settings(StagerSettings)
        rules = load_rules(settings.stage_rules_file, dict(os.environ))
    except ConfigError as exc:
        sys.exit(f"stager: {exc}")
    # Faust does not create source topics; the topic table is created (idempotently) first
    start_worker("stager", settings, lambda: create_app(settings, rules), settings.stager_web_port)


if __name__ == "__main__":
    main()
