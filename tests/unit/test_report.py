"""The campaign report reads what attribution wrote (crm/report.py)."""

from __future__ import annotations

import asyncio

from crm.report import campaign_readouts
from services.common import keys


class _Hashes:
    """The two Redis hashes the report reads, in memory."""

    def __init__(self, hashes: dict[str, dict[str, str]]) -> None:
        self.hashes = hashes

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {k.encode(): v.encode() for k, v in self.hashes.get(key, {}).items()}


def test_a_rule_name_holding_the_separator_is_read_whole() -> None:
    redis = _Hashes({
        keys.campaigns_key("t"): {"spring|sale": "spring|sale|14"},
        keys.campaign_key("t", "spring|sale"): {"final|treatment|trials": "3", "final|control|trials": "1"},
    })  # fmt: skip
    (found,) = asyncio.run(campaign_readouts(redis, "t"))
    assert (found.campaign_id, found.rule, found.window_days) == ("spring|sale", "spring|sale", 14)
    assert (found.treatment.trials, found.control.trials) == (3, 1)
