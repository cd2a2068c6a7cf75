"""`python -m services.attribution` (or `crm attribution worker`): run a attribution worker."""

from __future__ import annotations

from collections.abc import Callable

import faust

from services.attribution.app import create_app
from services.attribution.config import load_attribution_config
from services.attribution.settings import AttributionSettings
from services.common.faustapp import worker_main


def prepare(settings: AttributionSettings) -> Callable[[], faust.App]:
    """Load the rules first (a bad one stops start-up naming its key); the app comes later."""
    config = load_attribution_config(settings.attribution_file)
    return lambda: create_app(settings, config)


def main() -> None:
    worker_main("attribution", AttributionSettings, prepare)


if __name__ == "__main__":
    main()
