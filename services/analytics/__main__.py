"""`python -m services.analytics` (or `crm analytics worker`): run a history worker. The HTTP API
for marketers is `python -m services.analytics.api` (or `crm analytics api`)."""

from __future__ import annotations

from collections.abc import Callable

import faust

from services.analytics.app import create_app
from services.analytics.settings import AnalyticsSettings
from services.common.faustapp import worker_main


def prepare(settings: AnalyticsSettings) -> Callable[[], faust.App]:
    return lambda: create_app(settings)


def main() -> None:
    worker_main("analytics", AnalyticsSettings, prepare)


if __name__ == "__main__":
    main()
