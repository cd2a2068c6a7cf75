"""Pure request-body splitting: bytes -> one `RawItem` per input item, each parsed on its own.

A body is a JSON array, a single JSON value, or NDJSON. The items of an array are cut out of the
body by their byte spans, so each keeps the bytes it was sent with and a problem in one (invalid
JSON, a duplicate key, nesting too deep) rejects that item alone. Nesting depth is measured
without recursing before any item is handed to `json.loads`, whose C scanner recurses per level.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

__all__ = ["DEFAULT_MAX_DEPTH", "RawItem", "nesting_depth", "parse_item", "split_body"]

DEFAULT_MAX_DEPTH = 32

# A whole JSON string (so brackets and commas inside it do not count) or one structural character.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING)
_TOKENS = re.compile(_STRING + rb"|[\[\]{},]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = [1 if c in b"[{" else -1 if c in b"]}" else 0 for c in range(256)]
_QUOTE, _COMMA = ord('"'), ord(",")
_OPENERS = frozenset(b"[{")


@dataclass(frozen=True, slots=True)
class RawItem:
    """One input item: its original bytes and, when they parsed, the JSON value.

    When they did not, `parse_error` says why and `error_code` is the rejection code.
    """

    raw: bytes
    value: Any = None
    parse_error: str | None = None
    error_code: str = "invalid_json"


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def nesting_depth(text: bytes) -> int:
    """How deeply arrays and objects nest in `text` (0 for a scalar); linear, without recursion.

    For valid JSON this is exact; for broken JSON it is never less than what a parser would reach.
    """
    brackets = _STRINGS.sub(b"", text).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def parse_item(raw: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> RawItem:
    """`raw` parsed as one JSON value, or an item that says why it cannot be."""
    if nesting_depth(raw) > max_depth:
        return RawItem(raw, None, f"nested deeper than {max_depth} levels", "too_deep")
    try:
        return RawItem(raw, json.loads(raw, object_pairs_hook=_unique_keys))
    except _DuplicateKey as exc:
        key = exc.key[:64].encode("utf-8", "backslashreplace").decode()
        return RawItem(raw, None, f"key {key!r} appears more than once in an object", "duplicate_key")
    except RecursionError:  # unreachable after the depth check; kept so a parser change cannot give a 500
        return RawItem(raw, None, f"nested deeper than {max_depth} levels", "too_deep")
    except ValueError as exc:
        return RawItem(raw, None, str(exc))


def _array_items(text: bytes) -> list[bytes] | None:
    """Byte spans of the top-level items of `text`, or None when `text` is not exactly one array."""
    depth = 0
    start = 1
    spans: list[bytes] = []
    for token in _TOKENS.finditer(text):
        char = text[token.start()]
        if char == _QUOTE:
            continue
        if char in _OPENERS:
            depth += 1
        elif char == _COMMA:
            if depth == 1:
                spans.append(text[start : token.start()])
                start = token.end()
        else:
            depth -= 1
            if depth == 0:
                if token.end() != len(text):
                    return None  # more after the array: NDJSON or garbage
                spans.append(text[start : token.start()])
                return [] if len(spans) == 1 and not spans[0].strip() else [s.strip() for s in spans]
            if depth < 0:
                return None
    return None


def split_body(body: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> list[RawItem]:
    """A JSON array, a single JSON value, or NDJSON (one JSON value per line) -> items.

    An item that is not JSON, repeats a key in an object or nests deeper than `max_depth` becomes
    an item with `parse_error`, so it is rejected alone.
    """
    text = body.strip()
    if not text:
        return []
    if text.startswith(b"["):
        spans = _array_items(text)
        if spans is not None:
            return [parse_item(span, max_depth) for span in spans]
    whole = parse_item(text, max_depth)
    if whole.parse_error is None:
        return [whole]
    # each line keeps its bytes as received, minus the line break
    return [parse_item(line, max_depth) for line in body.splitlines() if line.strip()]
