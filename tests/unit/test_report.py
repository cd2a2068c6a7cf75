"""The campaign report reads what attribution wrote (crm/report.py)."""

from __future__ import annotations

import asyncio

from crm.report import campaign_readouts
from services.common import keys


class _Pipe:
    def __init__(self, redis: _Redis) -> None:
        self.redis, self.queued = redis, []  # type: ignore[var-annotated]

    async def __aenter__(self) -> _Pipe:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def hgetall(self, key: str) -> None:
        self.queued.append(key)

    async def execute(self) -> list[dict[bytes, bytes]]:
        return [self.redis.read(key) for key in self.queued]


class _Redis:
    """The Redis hashes the report reads and the units set, in memory."""

    def __init__(self, hashes: dict[str, dict[str, str]], units: set[str]) -> None:
        self.hashes, self.units = hashes, units

    def read(self, key: str) -> dict[bytes, bytes]:
        return {k.encode(): v.encode() for k, v in self.hashes.get(key, {}).items()}

    async def smembers(self, key: str) -> set[bytes]:
        assert key == keys.units_key()
        return {u.encode() for u in self.units}

    def pipeline(self, transaction: bool) -> _Pipe:
        return _Pipe(self)


def test_a_rule_name_holding_the_separator_is_read_whole_and_shards_are_summed() -> None:
    redis = _Redis(
        {
            keys.campaigns_key("t", 0): {"spring|sale": "spring|sale|14"},
            keys.campaigns_key("t", 3): {"spring|sale": "spring|sale|14"},
            keys.campaign_key("t", 0, "spring|sale"): {"final|treatment|trials": "3", "final|control|trials": "1"},
            keys.campaign_key("t", 3, "spring|sale"): {"final|treatment|trials": "2"},
            keys.campaign_key("other", 0, "spring|sale"): {"final|treatment|trials": "50"},
        },
        {"t|0", "t|3", "other|0"},
    )
    (found,) = asyncio.run(campaign_readouts(redis, "t"))
    assert (found.campaign_id, found.rule, found.window_days) == ("spring|sale", "spring|sale", 14)
    assert (found.treatment.trials, found.control.trials) == (5, 1)
