"""Compact binary form of a CustomerState (one Redis hash field per customer).

Unsigned LEB128 varints; times are stored as distances back from the customer's clock, so the
usual recent times take two to four bytes. Version byte first, so the layout can evolve.
"""

from __future__ import annotations

from operator import attrgetter

from services.common.varint import VarintReader, put_uvarint, zigzag
from services.stager.rules import MODELS, CustomerState, Fact, Kind, stage_names

__all__ = ["decode_state", "encode_state"]

# 2: session fields; 3: lists as deltas, fixed-width fingerprints; 4: path step inside the delta;
# 5: recent events with a fingerprint, pending facts and referral credits at the end;
# 6: SICAS: its stage and three more times (last product interest, last join, last credit);
# 7: each pending fact's acceptance time
VERSION = 7
READABLE = (4, 5, 6, 7)
# the models whose stages each layout holds, in order (before 6: no SICAS)
_BEFORE_6 = ("pyramid", "aipl", "lifecycle", "path", "value_grid")
_LAYOUT_MODELS = {4: _BEFORE_6, 5: _BEFORE_6, 6: MODELS, 7: MODELS}
_STAGE_CODE = {model: {name: i + 1 for i, name in enumerate(stage_names(model))} for model in MODELS}
_STAGE_NAME = {model: {i + 1: name for i, name in enumerate(stage_names(model))} for model in MODELS}


_put = put_uvarint
# the times of a state, in layout order (the last three since layout 6)
_TIMES = (
    "member_since",
    "last_event",
    "last_paid",
    "last_browse",
    "last_interest",
    "session_start",
    "session_end",
    "last_product_interest",
    "last_join",
    "last_credit",
)
_times = attrgetter(*_TIMES)


def encode_state(s: CustomerState, seen: list[tuple[int, int]]) -> bytes:
    """`s` and the recent event fingerprints [(time, fp32)] as bytes."""
    out = bytearray([VERSION])
    clock = s.clock
    _put(out, clock)
    for n in (s.events, s.interest, s.paid, s.referrals, int(s.credited_referrer), s.seq):
        _put(out, n)
    for t in _times(s):
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
    for t, step, fp in s.recent:
        _put(out, (previous - t) << 3 | step)  # steps are 0-4: three bits
        out += fp.to_bytes(2, "little")
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
    _put(out, len(s.pending))
    for fact in s.pending:
        d = fact.time - clock
        _put(out, zigzag(d))  # zig-zag: a pending fact is normally after the clock
        out.append(fact.kind)
        _text(out, fact.event_id)
        out += fact.order_key.to_bytes(4, "little")
        _put(out, fact.amount_cents)
        _text(out, fact.referrer or "")
        _text(out, fact.origin)
        _put(out, fact.accepted)
    _put(out, len(s.credits))
    for fp in s.credits:
        out += fp.to_bytes(4, "little")
    return bytes(out)


def _text(out: bytearray, text: str) -> None:
    raw = text.encode()
    _put(out, len(raw))
    out += raw


def decode_state(data: bytes) -> tuple[CustomerState, list[tuple[int, int]]]:
    if not data or data[0] not in READABLE:
        raise ValueError(f"unknown state layout version {data[:1].hex() or 'empty'}")
    layout = data[0]
    r = VarintReader(data, 1)
    get = r.uint
    clock = get()
    s = CustomerState(clock=clock)
    s.events, s.interest, s.paid, s.referrals, credited, s.seq = (get() for _ in range(6))
    s.credited_referrer = bool(credited)
    n = len(_TIMES) if layout >= 6 else 7  # layouts before 6 kept no SICAS times
    times = [clock - d + 1 if d else 0 for d in (get() for _ in range(n))] + [0] * (len(_TIMES) - n)
    for name, t in zip(_TIMES, times, strict=True):
        setattr(s, name, t)
    s.session_best = r.byte()
    orders = []
    previous = clock
    for _ in range(get()):
        key = r.fixed(4)
        previous -= get()
        cents = get()
        orders.append((key, previous, cents, r.byte()))
    s.orders = orders
    recent = []
    previous = clock
    width = 2 if layout >= 5 else 0  # layout 4 kept no fingerprints
    for _ in range(get()):
        packed = get()
        previous -= packed >> 3
        recent.append((previous, packed & 7, r.fixed(width)))
    s.recent = recent
    stages = _stages(data, r.pos, layout)
    r.pos += len(_LAYOUT_MODELS[layout])
    s.stages = stages if any(stages.values()) or s.events else {}
    seen = []
    previous = clock
    for _ in range(get()):
        previous -= get()
        seen.append((previous, r.fixed(4)))
    if layout >= 5:
        s.pending, s.credits = _tail(r, clock, layout)
    return s, seen


def _stages(data: bytes, pos: int, layout: int) -> dict[str, str | None]:
    """The stage of every model, one byte each (0: none) from `pos` for the models `layout` holds."""
    stages: dict[str, str | None] = dict.fromkeys(MODELS)
    for i, model in enumerate(_LAYOUT_MODELS[layout]):
        code = data[pos + i]
        stages[model] = _STAGE_NAME[model][code] if code else None
    return stages


def _tail(r: VarintReader, clock: int, layout: int) -> tuple[list[Fact], list[int]]:
    """The pending facts and the referral credits (layouts 5 on; acceptance times from 7)."""
    out = []
    for _ in range(r.uint()):
        time = clock + r.sint()
        kind = Kind(r.byte())
        event_id = r.text()
        order_key = r.fixed(4)
        cents = r.uint()
        referrer = r.text() or None
        origin = r.text()
        out.append(Fact(event_id, kind, time, order_key, cents, referrer, origin, r.uint() if layout >= 7 else 0))
    credits = [r.fixed(4) for _ in range(r.uint())]
    return out, credits
