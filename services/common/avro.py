"""Avro codec for every topic: binary encoding with the single-object header.

Each message is `C3 01` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
parsing canonical form + the Avro binary body (Avro specification, "Single-object encoding"),
so any consumer holding `schemas/` can decode any message without a registry.

Earlier versions of a schema stay in `schemas/previous/` (`<name>.<n>.avsc`): a message written
with one is read as the current version (Avro schema resolution: a field added since takes its
default), so records on Kafka from before a change, and from writers not yet upgraded, still read.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from services.common.avrocompile import compile_reader, compile_writer
from services.common.errors import SchemaError

__all__ = ["Codec", "MAGIC", "crc64_avro", "default_codec", "schema_dir"]

MAGIC = b"\xc3\x01"
_HEADER = len(MAGIC) + 8
_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint the Avro specification calls CRC-64-AVRO."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def schema_dir() -> Path:
    """Folder holding the `.avsc` contract (`CRM_SCHEMA_DIR` overrides the repository's `schemas/`)."""
    override = os.environ.get("CRM_SCHEMA_DIR")  # read once here, for tools run outside a service
    return Path(override) if override else Path(__file__).resolve().parents[2] / "schemas"


def _load(path: Path) -> _Entry:
    try:
        raw = json.loads(path.read_text())
        parsed = fastavro.parse_schema(raw, _write_hint=False)
    except (ValueError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"{path.name}: {exc}") from exc
    fp = struct.pack("<Q", crc64_avro(to_parsing_canonical_form(parsed).encode()))
    return _Entry(f"{raw['namespace']}.{raw['name']}", parsed, MAGIC + fp, raw)


class _Entry:
    __slots__ = ("name", "parsed", "header", "raw", "write")

    def __init__(self, name: str, parsed: Any, header: bytes, raw: dict[str, Any]) -> None:
        self.name = name
        self.parsed = parsed
        self.header = header
        self.raw = raw
        try:
            self.write: Callable[[Mapping[str, Any]], bytes] | None = compile_writer(raw, header)
        except NotImplementedError:
            self.write = None


class Codec:
    """Encodes and decodes records of every schema in a folder, by full name or by fingerprint."""

    def __init__(self, folder: Path) -> None:
        self._by_name: dict[str, _Entry] = {}
        self._by_fp: dict[bytes, _Entry] = {}
        files = sorted(folder.glob("*.avsc"))
        if not files:
            raise SchemaError(f"no .avsc files in {folder}")
        for path in files:
            entry = _load(path)
            self._by_name[entry.name] = entry
            self._by_fp[entry.header[2:]] = entry
        self._old: dict[bytes, tuple[_Entry, _Entry]] = {}  # fingerprint -> (its version, the current)
        for path in sorted((folder / "previous").glob("*.avsc")):
            old = _load(path)
            current = self._by_name.get(old.name)
            if current is None:
                raise SchemaError(f"previous/{path.name}: no current schema {old.name}")
            self._old[old.header[2:]] = (old, current)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def schema(self, name: str) -> dict[str, Any]:
        """The schema as written in its `.avsc` file."""
        return self._entry(name).raw

    def fingerprint(self, name: str) -> bytes:
        return self._entry(name).header[2:]

    def _entry(self, name: str) -> _Entry:
        try:
            return self._by_name[name]
        except KeyError:
            raise SchemaError(f"unknown schema {name!r}; known: {', '.join(self.names)}") from None

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Single-object encoding of `record` under schema `name`; SchemaError if it does not fit."""
        entry = self._entry(name)
        if entry.write is not None:
            try:
                return entry.write(record)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError, struct.error):
                pass  # fastavro says precisely what does not fit (or accepts a coercion)
        buf = io.BytesIO()
        buf.write(entry.header)
        try:
            fastavro.schemaless_writer(buf, entry.parsed, record, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SchemaError(f"{name}: record does not match schema: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """(schema name, record) of a single-object-encoded message."""
        if len(data) < _HEADER or data[:2] != MAGIC:
            raise SchemaError("not an Avro single-object message (missing C3 01 marker)")
        entry, reader = self._by_fp.get(data[2:_HEADER]), None
        if entry is None:
            old = self._old.get(data[2:_HEADER])
            if old is None:
                raise SchemaError(f"unknown schema fingerprint {data[2:_HEADER].hex()}")
            entry, reader = old[0], old[1].parsed
        try:
            record = fastavro.schemaless_reader(io.BytesIO(data[_HEADER:]), entry.parsed, reader)
        except (EOFError, ValueError, IndexError, OverflowError, TypeError) as exc:
            raise SchemaError(f"{entry.name}: cannot decode body: {exc}") from exc
        return entry.name, record  # type: ignore[return-value]

    def reader(self, fields: Mapping[str, Iterable[str]]) -> Callable[[bytes], tuple[str, dict[str, Any]]]:
        """A fast `read(message) -> (schema name, record)` for hot paths: records of the schemas
        named in `fields` hold only those fields (reading stops after the last of them), others
        every field; times are epoch milliseconds. SchemaError as `decode`."""
        readers: dict[bytes, tuple[str, Callable[[bytes, int], dict[str, Any]]]] = {}
        for fp, entry in self._by_fp.items():
            wanted = fields.get(entry.name)
            readers[fp] = (entry.name, compile_reader(entry.raw, None if wanted is None else list(wanted)))

        def read(data: bytes) -> tuple[str, dict[str, Any]]:
            found = readers.get(data[2:_HEADER])
            if found is None or data[:2] != MAGIC:
                return self.decode(data)  # an earlier version's (resolved), or the precise SchemaError
            try:
                return found[0], found[1](data, _HEADER)
            except (IndexError, ValueError, OverflowError, TypeError) as exc:
                raise SchemaError(f"{found[0]}: cannot decode body: {exc}") from exc

        return read


@lru_cache(maxsize=4)
def _codec_for(folder: str) -> Codec:
    return Codec(Path(folder))


def default_codec() -> Codec:
    """The codec for the repository's `schemas/` folder (built once per process)."""
    return _codec_for(str(schema_dir()))
