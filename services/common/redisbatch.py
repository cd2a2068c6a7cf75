"""The Redis client every process opens, and Lua scripts that read or write one field of many
hashes in a single round trip."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster

__all__ = ["HGET_MANY", "HSET_MANY", "connect"]


def connect(url: str, cluster: bool = False) -> Any:
    """A client of `url` answering bytes (with `cluster`, redis-py's Redis Cluster client, `url`
    any node of it); a call waits at most 10 s for an answer and 5 s to connect, so an outage
    surfaces as an error the caller retries instead of a hang."""
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    return Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


# KEYS: hashes; returns field `s` of each (nil where absent).
HGET_MANY = "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 's') end return out"
# KEYS: hashes, ARGV: one value each for field `s`. Run inside MULTI with EVAL, not EVALSHA, so
# a script missing from the cache cannot fail half a transaction.
HSET_MANY = "for i, key in ipairs(KEYS) do redis.call('HSET', key, 's', ARGV[i]) end return #KEYS"
