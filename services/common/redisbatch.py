"""Lua scripts that read or write one field of many hashes in a single round trip."""

from __future__ import annotations

__all__ = ["HGET_MANY", "HSET_MANY"]

# KEYS: hashes; returns field `s` of each (nil where absent).
HGET_MANY = "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 's') end return out"
# KEYS: hashes, ARGV: one value each for field `s`. Run inside MULTI with EVAL, not EVALSHA, so
# a script missing from the cache cannot fail half a transaction.
HSET_MANY = "for i, key in ipairs(KEYS) do redis.call('HSET', key, 's', ARGV[i]) end return #KEYS"
