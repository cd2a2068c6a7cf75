"""The batch reference of trigger decisions (tests/integration/batch_triggers.py) against
small cases computed by hand."""

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tests.integration.batch_triggers import Order, decisions_from_orders, quiet_deferral

HOUR = 3_600_000
DAY = 24 * HOUR
T, C = "shop", "c1"
D0 = int(datetime(1997, 1, 1, tzinfo=UTC).timestamp() * 1000)  # 08:00 in Shanghai: quiet until 09:00
ALL = ("first_purchase_gift", "repurchase_reminder", "vip_rights", "winback_declining", "winback_churned", "welcome")


def orders(*days: float) -> list[Order]:
    return [(C, f"e{i}", D0 + int(d * DAY), 10.0) for i, d in enumerate(days, 1)]


def decide(
    days: Sequence[float], until_day: int, rules: tuple[str, ...] = ALL, **kw: Any
) -> list[tuple[str, str, str, int, int, str | None]]:
    kw = {"holdout_share": 0.0, "global_holdout_share": 0.0, **kw}
    found = decisions_from_orders(orders(*days), T, rules, until=D0 + until_day * DAY, **kw)
    return sorted(found.values(), key=lambda d: (d[3], d[0]))


def lifecycle(cause: str) -> str:
    tid = hashlib.blake2b(f"{T}|{C}|lifecycle|{cause}".encode(), digest_size=12).hexdigest()
    return f"transition:{tid}"


def day(n: int) -> int:
    return D0 + n * DAY


def test_ids_follow_the_documented_formulas() -> None:
    found = decisions_from_orders(orders(0), T, ("first_purchase_gift",), holdout_share=0, global_holdout_share=0)
    tr = hashlib.blake2b(f"{T}|{C}|pyramid|e1".encode(), digest_size=12).hexdigest()
    cause = f"transition:{tr}"
    tid = hashlib.blake2b(f"first_purchase_gift|{T}|{C}|{cause}".encode(), digest_size=16).hexdigest()
    assert found == {tid: ("first_purchase_gift", C, cause, D0, D0 + HOUR, None)}


def test_quiet_hours_defer_to_nine_in_shanghai() -> None:
    assert quiet_deferral(D0) == D0 + HOUR  # 08:00 local
    assert quiet_deferral(D0 + 2 * HOUR) == D0 + 2 * HOUR  # 10:00 local
    assert quiet_deferral(D0 + 13 * HOUR) == D0 + 25 * HOUR  # 21:00 local: the next morning


def test_reminders_at_the_usual_interval() -> None:
    got = decide([0, 10, 40], 100, ("repurchase_reminder",))
    assert [(d[2], d[3], d[4]) for d in got] == [
        ("repurchase:e2", day(10 + 10), day(20) + HOUR),
        ("repurchase:e3", day(40 + 20), day(60) + HOUR),  # (40 - 0) // 2
    ]


def test_a_newer_order_replaces_the_reminder_but_not_at_the_due_instant() -> None:
    assert [d[2] for d in decide([0, 10, 15], 100, ("repurchase_reminder",))] == ["repurchase:e3"]
    # the day-10 reminder is due on day 20: it fires before the day-20 order replaces it
    got = decide([0, 10, 20], 100, ("repurchase_reminder",))
    assert [(d[2], d[3]) for d in got] == [("repurchase:e2", day(20)), ("repurchase:e3", day(30))]


def test_a_reminder_waits_at_least_a_day() -> None:
    got = decide([0, 0.25], 5, ("repurchase_reminder",))  # 06:00 UTC = 14:00 local
    assert [(d[3], d[4]) for d in got] == [(D0 + 30 * HOUR, D0 + 30 * HOUR)]


def test_single_order_gift_welcome_decline_and_churn() -> None:
    got = decide([0], 200)
    assert [(d[0], d[3], d[5]) for d in got] == [
        ("first_purchase_gift", day(0), None),
        ("welcome", day(0), None),
        ("winback_declining", day(90), None),
        ("winback_churned", day(180), None),
    ]
    assert got[2][2] == lifecycle(f"timer:{day(90)}")
    assert got[3][2] == lifecycle(f"timer:{day(180)}")
    assert got[2][4] == day(90) + HOUR


def test_an_order_before_the_decline_cancels_it_one_on_the_instant_does_not() -> None:
    got = decide([0, 89], 200, ("winback_declining",))
    assert [d[3] for d in got] == [day(89 + 90)]
    got = decide([0, 90], 200, ("winback_declining",))
    assert [d[3] for d in got] == [day(90), day(180)]


def test_each_decline_is_its_own_decision() -> None:
    got = decide([0, 100, 300], 400, ("winback_declining", "winback_churned"))
    assert [(d[0], d[3]) for d in got] == [
        ("winback_declining", day(90)),
        ("winback_declining", day(190)),
        ("winback_churned", day(280)),
        ("winback_declining", day(390)),
    ]


def test_push_cap_three_a_week() -> None:
    # gift day 0; two orders on day 0 -> reminder day 1; orders on days 1 and 2 at the due
    # instants -> reminders days 2 and 3; the fourth push within 7 days is capped
    got = decide([0, 0, 1, 2], 10, ("first_purchase_gift", "repurchase_reminder"))
    assert [(d[0], d[3], d[5]) for d in got] == [
        ("first_purchase_gift", day(0), None),
        ("repurchase_reminder", day(1), None),
        ("repurchase_reminder", day(2), None),
        ("repurchase_reminder", day(3), "frequency_cap"),
    ]
    assert got[3][4] == day(3) + HOUR


def test_email_cap_one_a_day_churn_first() -> None:
    # churned on day 180 (a timer) comes before the third order's loyal transition at that instant
    got = decide([0, 0, 180], 200, ("vip_rights", "winback_churned"))
    assert [(d[0], d[3], d[4], d[5]) for d in got] == [
        ("vip_rights", day(180), day(180) + HOUR, "frequency_cap"),
        ("winback_churned", day(180), day(180) + HOUR, None),
    ]


def test_held_out_decisions_keep_the_send_time() -> None:
    got = decide([0], 1, ("first_purchase_gift",), global_holdout_share=1.0)
    assert [(d[4], d[5]) for d in got] == [(D0 + HOUR, "holdout:global")]
    got = decide([0], 1, ("first_purchase_gift",), holdout_share=1.0)
    assert [(d[4], d[5]) for d in got] == [(D0 + HOUR, "holdout")]


def test_timers_after_the_clock_do_not_fire() -> None:
    assert decide([0, 10], 19, ("repurchase_reminder",)) == []
    assert len(decide([0, 10], 20, ("repurchase_reminder",))) == 1
