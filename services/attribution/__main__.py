"""`python -m services.attribution` (or `crm attribution worker`): run an attribution worker."""

from __future__ import annotations

import sys

from services.attribution.app import create_app
from services.attribution.config import load_attribution_config
from services.attribution.settings import AttributionSettings
from services.common.errors import ConfigError
from services.common.faustapp import start_worker
from services.common.settings import load_settings


def main() -> None:
    try:
        settings = load_settings(AttributionSettings)
        config = load_attribution_config(settings.attribution_file)
    except ConfigError as exc:
        sys.exit(f"attribution: {exc}")
    start_worker("attribution", settings, lambda: create_app(settings, config), settings.attribution_web_port)


if __name__ == "__main__":
    main()
