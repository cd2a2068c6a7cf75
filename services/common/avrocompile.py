"""Avro binary readers and writers compiled from the schemas into Python functions.

fastavro's `schemaless_reader`/`schemaless_writer` interpret the schema on every call, which
costs about 10 µs per small record here; a function generated once per schema does the same work
in a fraction of that. A reader may stop after the last field its caller needs (the hot paths
read a few leading fields of each event). Times (`timestamp-millis`) are read as epoch
milliseconds (int); the writer takes ints or aware datetimes. The output is byte-for-byte what
fastavro writes (tests/unit/test_avrocompile.py checks both directions on random records).
Unions other than `["null", T]` are not compiled: `compile_writer` raises `NotImplementedError`
and the codec keeps fastavro for that schema.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from services.common import varint
from services.common.times import epoch_ms

__all__ = ["compile_reader", "compile_writer", "zigzag"]

Reader = Callable[[bytes, int], dict[str, Any]]
Writer = Callable[[Mapping[str, Any]], bytes]
_SMALL = [bytes([n]) for n in range(128)]


def zigzag(n: int) -> bytes:
    """Avro's zig-zag varint encoding of an int or long."""
    z = varint.zigzag(n)
    if 0 <= z < 128:
        return _SMALL[z]
    out = bytearray()
    varint.put_uvarint(out, z)
    return bytes(out)


class _Gen:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {
            "_varint": varint.read_uvarint,
            "_D": struct.Struct("<d").unpack_from,
            "_F": struct.Struct("<f").unpack_from,
            "_PD": struct.Struct("<d").pack,
            "_PF": struct.Struct("<f").pack,
            "_zz": zigzag,
            "_millis": epoch_ms,
            "_S": _SMALL,
        }
        self.names: dict[str, Any] = {}
        self.count = 0

    def var(self, stem: str = "v") -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, value: Any) -> str:
        name = f"K{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def resolve(self, t: Any, namespace: str | None) -> Any:
        if isinstance(t, str) and t not in _PRIMITIVES:
            full = t if "." in t or namespace is None else f"{namespace}.{t}"
            return self.names.get(full) or self.names[t]
        if isinstance(t, dict) and t.get("type") in ("record", "enum", "fixed"):
            ns = t.get("namespace", namespace)
            full = t["name"] if "." in t["name"] or ns is None else f"{ns}.{t['name']}"
            self.names[full] = t
            t.setdefault("_ns", ns)
        return t

    # --- reading -----------------------------------------------------------------------------
    def read_long(self, ind: int, target: str) -> None:
        self.emit(ind, "n = buf[pos]; pos += 1")
        self.emit(ind, "if n > 127: n, pos = _varint(buf, pos - 1)")
        self.emit(ind, f"{target} = (n >> 1) ^ -(n & 1)")

    def read(self, t: Any, ind: int, target: str | None, ns: str | None) -> None:
        """Code reading a value of type `t` into `target` (None: skip it)."""
        t = self.resolve(t, ns)
        if isinstance(t, list):
            self._read_union(t, ind, target, ns)
            return
        kind = t if isinstance(t, str) else t["type"]
        if isinstance(t, dict) and kind in _PRIMITIVES:  # {"type": "long", "logicalType": ...}
            self.read(kind, ind, target, ns)
        elif kind in ("array", "map"):
            self._read_blocks(t, kind, ind, target, ns)
        elif kind == "record":
            self.read_record(t, ind, target, None, t.get("_ns", ns))
        elif kind in _SIMPLE:
            getattr(self, f"_read_{kind}")(t, ind, target)
        else:
            raise NotImplementedError(f"Avro type {kind!r}")

    def _read_null(self, t: Any, ind: int, target: str | None) -> None:
        if target:
            self.emit(ind, f"{target} = None")

    def _read_boolean(self, t: Any, ind: int, target: str | None) -> None:
        self.emit(ind, f"{target} = buf[pos] != 0; pos += 1" if target else "pos += 1")

    def _read_int(self, t: Any, ind: int, target: str | None) -> None:
        self.read_long(ind, target or "_")

    _read_long = _read_int

    def _read_float(self, t: Any, ind: int, target: str | None, size: int = 4, fn: str = "_F") -> None:
        if target:
            self.emit(ind, f"{target} = {fn}(buf, pos)[0]")
        self.emit(ind, f"pos += {size}")

    def _read_double(self, t: Any, ind: int, target: str | None) -> None:
        self._read_float(t, ind, target, 8, "_D")

    def _read_string(self, t: Any, ind: int, target: str | None, decode: str = ".decode()") -> None:
        self.read_long(ind, "size")
        self.emit(ind, "if size < 0: raise ValueError('negative length')")
        if target:
            self.emit(ind, f"{target} = buf[pos:pos + size]{decode}")
        self.emit(ind, "pos += size")

    def _read_bytes(self, t: Any, ind: int, target: str | None) -> None:
        self._read_string(t, ind, target, "")

    def _read_fixed(self, t: Any, ind: int, target: str | None) -> None:
        if target:
            self.emit(ind, f"{target} = buf[pos:pos + {t['size']}]")
        self.emit(ind, f"pos += {t['size']}")

    def _read_enum(self, t: Any, ind: int, target: str | None) -> None:
        idx = self.var("i")
        self.read_long(ind, idx)
        self.emit(ind, f"if {idx} < 0: raise IndexError('negative enum index')")
        if target:
            self.emit(ind, f"{target} = {self.const(tuple(t['symbols']))}[{idx}]")

    def _read_union(self, branches: list[Any], ind: int, target: str | None, ns: str | None) -> None:
        idx = self.var("u")
        self.read_long(ind, idx)
        for i, branch in enumerate(branches):
            self.emit(ind, f"{'if' if i == 0 else 'elif'} {idx} == {i}:")
            before = len(self.lines)
            self.read(branch, ind + 1, target, ns)
            if len(self.lines) == before:
                self.emit(ind + 1, "pass")
        self.emit(ind, "else: raise ValueError('union branch out of range')")

    def _read_blocks(self, t: dict[str, Any], kind: str, ind: int, target: str | None, ns: str | None) -> None:
        out, count, item = self.var("c"), self.var("k"), self.var("x")
        self.emit(ind, f"{out} = {'[]' if kind == 'array' else '{}'}")
        self.emit(ind, "while True:")
        self.read_long(ind + 1, count)
        self.emit(ind + 1, f"if {count} == 0: break")
        self.emit(ind + 1, f"if {count} < 0:")
        self.emit(ind + 2, f"{count} = -{count}")
        self.read_long(ind + 2, "_")
        self.emit(ind + 1, f"for _ in range({count}):")
        if kind == "array":
            self.read(t["items"], ind + 2, item, ns)
            self.emit(ind + 2, f"{out}.append({item})")
        else:
            key = self.var("m")
            self.read("string", ind + 2, key, ns)
            self.read(t["values"], ind + 2, item, ns)
            self.emit(ind + 2, f"{out}[{key}] = {item}")
        if target:
            self.emit(ind, f"{target} = {out}")

    def read_record(
        self, t: dict[str, Any], ind: int, target: str | None, wanted: set[str] | None, ns: str | None
    ) -> None:
        fields = t["fields"]
        if wanted is not None:
            last = max((i for i, f in enumerate(fields) if f["name"] in wanted), default=-1)
            fields = fields[: last + 1]
        rec = self.var("r")
        self.emit(ind, f"{rec} = {{}}")
        for f in fields:
            keep = target is not None and (wanted is None or f["name"] in wanted)
            self.read(f["type"], ind, f"{rec}[{f['name']!r}]" if keep else None, ns)
        if target:
            self.emit(ind, f"{target} = {rec}")

    # --- writing -----------------------------------------------------------------------------
    def write(self, t: Any, ind: int, value: str, ns: str | None) -> None:
        t = self.resolve(t, ns)
        if isinstance(t, list):
            self._write_union(t, ind, value, ns)
            return
        kind = t if isinstance(t, str) else t["type"]
        if isinstance(t, dict) and kind in _PRIMITIVES:
            if kind == "long" and t.get("logicalType") in ("timestamp-millis", "local-timestamp-millis"):
                self.emit(ind, f"a(_zz({value} if type({value}) is int else _millis({value})))")
            else:
                self.write(kind, ind, value, ns)
        elif kind in ("array", "map"):
            self._write_blocks(t, kind, ind, value, ns)
        elif kind == "record":
            self.write_record(t, ind, value, t.get("_ns", ns))
        elif kind in _SIMPLE:
            getattr(self, f"_write_{kind}")(t, ind, value)
        else:
            raise NotImplementedError(f"Avro type {kind!r}")

    def _write_union(self, branches: list[Any], ind: int, value: str, ns: str | None) -> None:
        if len(branches) != 2 or branches[0] != "null":
            raise NotImplementedError("only [null, T] unions are compiled")
        self.emit(ind, f"if {value} is None: a(b'\\x00')")
        self.emit(ind, "else:")
        self.emit(ind + 1, "a(b'\\x02')")
        self.write(branches[1], ind + 1, value, ns)

    def _write_blocks(self, t: dict[str, Any], kind: str, ind: int, value: str, ns: str | None) -> None:
        items, item = self.var("c"), self.var("x")
        self.emit(ind, f"{items} = {value}")
        self.emit(ind, f"if {items}:")
        self.emit(ind + 1, f"a(_zz(len({items})))")
        if kind == "array":
            self.emit(ind + 1, f"for {item} in {items}:")
            self.write(t["items"], ind + 2, item, ns)
        else:
            key = self.var("m")
            self.emit(ind + 1, f"for {key}, {item} in {items}.items():")
            self.write("string", ind + 2, key, ns)
            self.write(t["values"], ind + 2, item, ns)
        self.emit(ind, "a(b'\\x00')")

    def _write_null(self, t: Any, ind: int, value: str) -> None:
        self.emit(ind, f"if {value} is not None: raise TypeError('expected null')")

    def _write_boolean(self, t: Any, ind: int, value: str) -> None:
        self.emit(ind, f"a(b'\\x01' if {value} else b'\\x00')")

    def _write_int(self, t: Any, ind: int, value: str) -> None:
        self.emit(ind, f"a(_zz({value}.__index__()))")

    _write_long = _write_int

    def _write_float(self, t: Any, ind: int, value: str) -> None:
        self.emit(ind, f"a(_PF({value}))")

    def _write_double(self, t: Any, ind: int, value: str) -> None:
        self.emit(ind, f"a(_PD({value}))")

    def _write_string(self, t: Any, ind: int, value: str) -> None:
        enc = self.var("s")
        self.emit(ind, f"{enc} = {value}.encode()")
        # lengths below 64 are one byte: skip the call for them
        self.emit(ind, f"n = len({enc}) << 1; a(_S[n] if n < 128 else _zz(n >> 1)); a({enc})")

    def _write_bytes(self, t: Any, ind: int, value: str) -> None:
        self.emit(ind, f"a(_zz(len({value}))); a(bytes({value}))")

    def _write_fixed(self, t: Any, ind: int, value: str) -> None:
        self.emit(ind, f"if len({value}) != {t['size']}: raise ValueError('fixed size')")
        self.emit(ind, f"a(bytes({value}))")

    def _write_enum(self, t: Any, ind: int, value: str) -> None:
        index = self.const({s: zigzag(i) for i, s in enumerate(t["symbols"])})
        self.emit(ind, f"a({index}[{value}])")

    def write_record(self, t: dict[str, Any], ind: int, value: str, ns: str | None) -> None:
        for f in t["fields"]:
            v = self.var("f")
            if "default" in f:
                default = self.const(_default_value(f))
                self.emit(ind, f"{v} = {value}.get({f['name']!r}, {default})")
            else:
                self.emit(ind, f"{v} = {value}[{f['name']!r}]")
            self.write(f["type"], ind, v, ns)


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_SIMPLE = _PRIMITIVES | {"fixed", "enum"}


def _default_value(field: dict[str, Any]) -> Any:
    default = field["default"]
    return dict(default) if isinstance(default, dict) else list(default) if isinstance(default, list) else default


def _copy(schema: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(schema)


def _build(gen: _Gen, name: str) -> Any:
    source = "\n".join(gen.lines)
    namespace: dict[str, Any] = dict(gen.consts)
    exec(compile(source, f"<avro {name}>", "exec"), namespace)  # generated from our own schemas only
    return namespace[name]


def compile_reader(schema: dict[str, Any], fields: Iterable[str] | None = None) -> Reader:
    """`read(buf, pos)` -> the record at `pos` of `buf`; with `fields`, only those (and reading
    stops after the last of them). IndexError or ValueError on a truncated or corrupt body."""
    gen = _Gen()
    schema = gen.resolve(_copy(schema), None)
    gen.emit(0, "def read(buf, pos):")
    gen.read_record(schema, 1, "out", None if fields is None else set(fields), schema.get("_ns"))
    gen.emit(1, "return out")
    return _build(gen, "read")  # type: ignore[no-any-return]


def compile_writer(schema: dict[str, Any], header: bytes = b"") -> Writer:
    """`write(record)` -> `header` + the record's Avro binary body. KeyError for a missing field
    without default, TypeError/AttributeError/KeyError for a value of the wrong type."""
    gen = _Gen()
    schema = gen.resolve(_copy(schema), None)
    head = gen.const(header)
    gen.emit(0, "def write(rec):")
    gen.emit(1, f"out = [{head}]; a = out.append")
    gen.write_record(schema, 1, "rec", schema.get("_ns"))
    gen.emit(1, "return b''.join(out)")
    return _build(gen, "write")  # type: ignore[no-any-return]
