"""Compact binary form of a CustomerState (one Redis hash field per customer).

Unsigned LEB128 varints; times are stored as distances back from the customer's clock, so the
usual recent times take two to four bytes. Version byte first, so the layout can evolve.
"""

from __future__ import annotations

from services.stager.rules import MODELS, CustomerState, stage_names

__all__ = ["decode_state", "encode_state"]

VERSION = 4  # 2: session fields; 3: lists as deltas, fixed-width fingerprints; 4: path step inside the delta
_STAGE_CODE = {model: {name: i + 1 for i, name in enumerate(stage_names(model))} for model in MODELS}
_STAGE_NAME = {model: {i + 1: name for i, name in enumerate(stage_names(model))} for model in MODELS}


def _put(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError(f"negative varint {n}")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def encode_state(s: CustomerState, seen: list[tuple[int, int]]) -> bytes:
    """`s` and the recent event fingerprints [(time, fp32)] as bytes."""
    out = bytearray([VERSION])
    clock = s.clock
    _put(out, clock)
    for n in (s.events, s.interest, s.paid, s.referrals, int(s.credited_referrer), s.seq):
        _put(out, n)
    for t in (
        s.member_since,
        s.last_event,
        s.last_paid,
        s.last_browse,
        s.last_interest,
        s.session_start,
        s.session_end,
    ):
        _put(out, clock - t + 1 if t else 0)
    out.append(s.session_best)
    # Lists are newest first: each time is stored as the distance from the previous one.
    _put(out, len(s.orders))
    previous = clock
    for key, t, cents, status in s.orders:
        out += key.to_bytes(4, "little")
        _put(out, previous - t)
        previous = t
        _put(out, cents)
        out.append(status)
    _put(out, len(s.recent))
    previous = clock
    for t, step in s.recent:
        _put(out, (previous - t) << 3 | step)  # steps are 0-4: three bits
        previous = t
    for model in MODELS:
        stage = s.stages.get(model)
        out.append(_STAGE_CODE[model][stage] if stage else 0)
    _put(out, len(seen))
    previous = clock
    for t, fp in seen:
        _put(out, previous - t)
        previous = t
        out += fp.to_bytes(4, "little")
    return bytes(out)


def decode_state(data: bytes) -> tuple[CustomerState, list[tuple[int, int]]]:
    if not data or data[0] != VERSION:
        raise ValueError(f"unknown state layout version {data[:1].hex() or 'empty'}")
    pos = 1

    def get() -> int:
        nonlocal pos
        n = shift = 0
        while True:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7

    clock = get()
    s = CustomerState(clock=clock)
    s.events, s.interest, s.paid, s.referrals, credited, s.seq = (get() for _ in range(6))
    s.credited_referrer = bool(credited)
    times = [get() for _ in range(7)]
    s.member_since, s.last_event, s.last_paid, s.last_browse, s.last_interest, s.session_start, s.session_end = (
        clock - d + 1 if d else 0 for d in times
    )
    s.session_best = data[pos]
    pos += 1
    orders = []
    previous = clock
    for _ in range(get()):
        key = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        previous -= get()
        cents = get()
        orders.append((key, previous, cents, data[pos]))
        pos += 1
    s.orders = orders
    recent = []
    previous = clock
    for _ in range(get()):
        packed = get()
        previous -= packed >> 3
        recent.append((previous, packed & 7))
    s.recent = recent
    stages: dict[str, str | None] = {}
    for model in MODELS:
        code = data[pos]
        pos += 1
        stages[model] = _STAGE_NAME[model][code] if code else None
    s.stages = stages if any(stages.values()) or s.events else {}
    seen = []
    previous = clock
    for _ in range(get()):
        previous -= get()
        seen.append((previous, int.from_bytes(data[pos : pos + 4], "little")))
        pos += 4
    return s, seen
