"""One exception base for the whole engine; each service subclasses it."""

from __future__ import annotations

__all__ = ["CrmError", "ConfigError", "SchemaError", "StackError"]


class CrmError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(CrmError, ValueError):
    """A setting is missing or invalid; the message names the key."""


class SchemaError(CrmError, ValueError):
    """A message does not match the Avro contract in `schemas/`."""


class StackError(CrmError, RuntimeError):
    """The local Kafka/Redis stack cannot be started, reached or stopped."""
