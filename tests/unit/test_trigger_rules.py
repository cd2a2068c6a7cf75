"""Trigger rules and guardrails, as pure functions (services/triggers/domain.py)."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import ConfigError
from services.triggers.config import Cap, Guardrails, TriggerConfig, TriggerRule, load_trigger_config
from services.triggers.domain import (
    CampaignIn,
    CartIn,
    Decision,
    Input,
    OrderIn,
    ProfileIn,
    TransitionIn,
    apply,
    apply_in_order,
    fire,
    holdout_unit,
    next_birthday,
    order_key,
    quiet_until,
    take,
    trigger_id,
)
from services.triggers.state import TriggerState, decode_state, encode_state

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T, C = "shop", "c1"
# 2024-03-05 10:00 Asia/Shanghai: daytime in the default zone
NOON = int(datetime(2024, 3, 5, 2, 0, tzinfo=UTC).timestamp() * 1000)


def cfg(**guard: Any) -> TriggerConfig:
    base = {"holdout_share": 0.0, "global_holdout_share": 0.0}
    return TriggerConfig(guardrails=Guardrails(**{**base, **guard}))


def tr(to: str, model: str = "pyramid", frm: str | None = None, at: int = NOON, tid: str = "tr1") -> TransitionIn:
    return TransitionIn(tid, model, frm, to, at)


def run(
    state: TriggerState, items: Sequence[Input], config: TriggerConfig, watermark: int | None = None
) -> list[Decision]:
    out: list[Decision] = []
    for item in items:
        out += apply(state, item, config, T, C)
    if watermark is not None:
        out += fire(state, watermark, config, T, C)
    return out


def rules_of(decisions: list[Decision]) -> list[str]:
    return [d.rule.name for d in decisions]


# --- rules -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "frm", "to", "rule"),
    [
        ("pyramid", "aware", "considering", "considering_coupon"),
        ("pyramid", "considering", "first_purchase", "first_purchase_gift"),
        ("pyramid", "repeat", "loyal", "vip_rights"),
        ("pyramid", "loyal", "advocate", "referral_incentive"),
        ("lifecycle", "new", "declining", "winback_declining"),
        ("lifecycle", "declining", "churned", "winback_churned"),
        ("lifecycle", "prospect", "new", "welcome"),
        ("lifecycle", None, "new", "welcome"),
    ],
)
def test_each_transition_rule_decides_its_action(model: str, frm: str | None, to: str, rule: str) -> None:
    out = run(TriggerState(), [tr(to, model, frm)], cfg())
    assert rules_of(out) == [rule]
    d = out[0]
    assert d.suppressed is None and d.decided_at == NOON and d.deliver_after == NOON
    assert d.trigger_id == trigger_id(rule, T, C, "transition:tr1")


def test_welcome_is_not_repeated_for_a_churned_customer_coming_back() -> None:
    assert run(TriggerState(), [tr("new", "lifecycle", "churned")], cfg()) == []


def test_a_transition_sent_twice_is_decided_once() -> None:
    state = TriggerState()
    assert len(run(state, [tr("considering"), tr("considering")], cfg())) == 1
    # also after the state went through Redis
    state = decode_state(encode_state(state))
    assert run(state, [tr("considering")], cfg()) == []


def test_delayed_transition_rule_fires_on_its_timer() -> None:
    config = load_trigger_config_from({"rules": [{"name": "vip_rights", "delay_seconds": 3600}]})
    state = TriggerState()
    assert run(state, [tr("loyal")], config) == []
    assert fire(state, NOON + HOUR - 1, config, T, C) == []
    out = fire(state, NOON + HOUR, config, T, C)
    assert rules_of(out) == ["vip_rights"] and out[0].decided_at == NOON + HOUR


def test_unpaid_order_reminder_fires_30_minutes_after_created() -> None:
    state = TriggerState()
    run(state, [OrderIn("e1", "o1", "created", NOON)], cfg())
    assert fire(state, NOON + 30 * MIN - 1, cfg(), T, C) == []
    out = fire(state, NOON + 30 * MIN, cfg(), T, C)
    assert rules_of(out) == ["unpaid_order_reminder"]
    assert out[0].cause == "order:o1" and out[0].rule.channel == "sms" and out[0].rule.topic == "reminders"
    assert fire(state, NOON + DAY, cfg(), T, C) == []  # once


@pytest.mark.parametrize("status", ["paid", "cancelled"])
def test_unpaid_order_reminder_is_cancelled_by_paid_or_cancelled(status: str) -> None:
    state = TriggerState()
    run(state, [OrderIn("e1", "o1", "created", NOON), OrderIn("e2", "o1", status, NOON + 10 * MIN)], cfg())
    assert "unpaid_order_reminder" not in rules_of(fire(state, NOON + DAY, cfg(), T, C))


def test_paid_arriving_before_its_created_sets_no_reminder() -> None:
    state = TriggerState()
    run(state, [OrderIn("e2", "o1", "paid", NOON + 10 * MIN), OrderIn("e1", "o1", "created", NOON)], cfg())
    assert "unpaid_order_reminder" not in rules_of(fire(state, NOON + DAY, cfg(), T, C))


def test_paying_one_order_leaves_the_reminder_of_another() -> None:
    state = TriggerState()
    items = [OrderIn("e1", "o1", "created", NOON), OrderIn("e2", "o2", "created", NOON)]
    items.append(OrderIn("e3", "o1", "paid", NOON))
    out = run(state, items, cfg(), watermark=NOON + HOUR)
    assert [d.cause for d in out if d.rule.name == "unpaid_order_reminder"] == ["order:o2"]


def test_abandoned_cart_reminder_fires_24_hours_after_the_last_add() -> None:
    state = TriggerState()
    run(state, [CartIn("e1", "add", NOON), CartIn("e2", "add", NOON + HOUR)], cfg())
    assert fire(state, NOON + DAY + HOUR - 1, cfg(), T, C) == []
    out = fire(state, NOON + DAY + HOUR, cfg(), T, C)
    assert rules_of(out) == ["abandoned_cart_reminder"] and out[0].cause == "cart:e2"


@pytest.mark.parametrize("status", ["created", "paid"])
def test_an_order_after_the_cart_cancels_the_cart_reminder(status: str) -> None:
    state = TriggerState()
    run(state, [CartIn("e1", "add", NOON), OrderIn("e2", "o1", status, NOON + HOUR)], cfg())
    assert "abandoned_cart_reminder" not in rules_of(fire(state, NOON + 3 * DAY, cfg(), T, C))


def test_an_order_before_a_late_cart_add_does_not_cancel_it() -> None:
    state = TriggerState()
    run(state, [OrderIn("e2", "o1", "created", NOON), CartIn("e1", "add", NOON + HOUR)], cfg())
    assert "abandoned_cart_reminder" in rules_of(fire(state, NOON + 3 * DAY, cfg(), T, C))


def test_repurchase_reminder_at_the_customers_usual_interval() -> None:
    state = TriggerState()
    paid = [OrderIn(f"p{i}", f"o{i}", "paid", NOON + i * 10 * DAY) for i in range(3)]  # every 10 days
    run(state, paid, cfg())
    last = NOON + 20 * DAY
    assert fire(state, last + 10 * DAY - 1, cfg(), T, C) == []
    out = fire(state, last + 10 * DAY, cfg(), T, C)
    assert rules_of(out) == ["repurchase_reminder"] and out[0].cause == "repurchase:p2"


def test_a_new_paid_order_moves_the_repurchase_reminder() -> None:
    state = TriggerState()
    run(state, [OrderIn("p0", "o0", "paid", NOON), OrderIn("p1", "o1", "paid", NOON + 10 * DAY)], cfg())
    run(state, [OrderIn("p2", "o2", "paid", NOON + 15 * DAY)], cfg())
    assert fire(state, NOON + 20 * DAY, cfg(), T, C) == []  # the reminder after p1 is gone
    # usual interval is now 7.5 days: from p2 at day 15 to day 22.5
    assert rules_of(fire(state, NOON + 22 * DAY + 12 * HOUR, cfg(), T, C)) == ["repurchase_reminder"]


def test_timers_due_between_inputs_of_one_batch_fire_between_them() -> None:
    # orders paid on days 0, 10 and 40: the reminder set by day 10 falls due on day 20, before day 40
    paid = [OrderIn(f"p{i}", f"o{i}", "paid", NOON + day * DAY) for i, day in enumerate((0, 10, 40))]
    one_by_one, together = TriggerState(), TriggerState()
    separate = []
    for order in paid:
        separate += [d for _, d in apply_in_order(one_by_one, [order], order.time, cfg(), T, C)]
    batched = [d for _, d in apply_in_order(together, list(reversed(paid)), NOON + 40 * DAY, cfg(), T, C)]
    assert [(d.rule.name, d.cause, d.decided_at) for d in batched] == [
        ("repurchase_reminder", "repurchase:p1", NOON + 20 * DAY)
    ]
    assert [d.trigger_id for d in batched] == [d.trigger_id for d in separate]
    assert together == one_by_one


def test_repeated_paid_event_counts_once() -> None:
    state = TriggerState()
    run(state, [OrderIn("p0", "o0", "paid", NOON)] * 2, cfg())
    assert state.paid_count == 1 and not state.timers


def test_a_second_paid_event_of_one_order_is_not_another_order() -> None:
    """A platform that sends `paid` twice for one order (a new event id each time) does not make
    the customer a repeat buyer: no repurchase reminder, one paid order counted, and the state
    survives its encoding."""
    state = TriggerState()
    run(state, [OrderIn("p0", "o0", "paid", NOON), OrderIn("p0-again", "o0", "paid", NOON + HOUR)], cfg())
    state = decode_state(encode_state(state))
    run(state, [OrderIn("p0-third", "o0", "paid", NOON + DAY)], cfg())
    assert state.paid_count == 1 and not state.timers
    assert fire(state, NOON + 400 * DAY, cfg(), T, C) == []


def test_birthday_gift_at_local_midnight_deferred_past_quiet_hours() -> None:
    state = TriggerState()
    run(state, [ProfileIn("e1", NOON, {}, "Asia/Shanghai", "1990-03-20")], cfg())
    midnight = int(datetime(2024, 3, 20, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)
    assert fire(state, midnight - 1, cfg(), T, C) == []
    out = fire(state, midnight, cfg(), T, C)
    assert rules_of(out) == ["birthday_gift"] and out[0].cause == "birthday:2024"
    assert out[0].decided_at == midnight and out[0].deliver_after == midnight + 9 * HOUR
    # and next year's is waiting
    assert state.timers["birthday_gift|birthday"].cause == "birthday:2025"


def test_birthday_on_29_february_in_a_common_year() -> None:
    zone = ZoneInfo("UTC")
    at, year = next_birthday("02-29", int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000), zone)
    assert year == 2025 and datetime.fromtimestamp(at / 1000, UTC).date().isoformat() == "2025-02-28"


# --- guardrails ------------------------------------------------------------------------------
def test_opt_out_suppresses_with_reason_consent() -> None:
    state = TriggerState()
    out = run(state, [ProfileIn("p", NOON - 1, {"push": False}), tr("considering")], cfg())
    assert [(d.rule.name, d.suppressed) for d in out] == [("considering_coupon", "consent")]


def test_opt_out_between_registration_and_firing_suppresses_the_reminder() -> None:
    state = TriggerState()
    run(state, [OrderIn("e1", "o1", "created", NOON)], cfg())
    run(state, [ProfileIn("p", NOON + 5 * MIN, {"sms": False})], cfg())
    out = fire(state, NOON + HOUR, cfg(), T, C)
    assert [(d.rule.name, d.suppressed) for d in out] == [("unpaid_order_reminder", "consent")]


def test_opt_in_required_when_consent_default_is_false() -> None:
    out = run(TriggerState(), [tr("considering")], cfg(consent_default=False))
    assert out[0].suppressed == "consent"
    out = run(TriggerState(), [ProfileIn("p", NOON, {"push": True}), tr("considering")], cfg(consent_default=False))
    assert out[0].suppressed is None


def test_frequency_cap_per_day_and_per_week() -> None:
    state = TriggerState()
    config = cfg()  # push: 1 per day, 3 per week
    first = run(state, [tr("considering", tid="a", at=NOON)], config)
    second = run(state, [tr("first_purchase", tid="b", at=NOON + HOUR)], config)
    assert first[0].suppressed is None and second[0].suppressed == "frequency_cap"
    # days 2 and 3 pass the daily cap; day 4 is the 4th in a week
    later = [tr("considering", tid=f"d{i}", at=NOON + i * DAY) for i in (1, 2, 3)]
    assert [d.suppressed for d in run(state, later, config)] == [None, None, "frequency_cap"]
    # a suppressed decision takes no slot: the week after, one per day again
    assert run(state, [tr("considering", tid="w", at=NOON + 8 * DAY)], config)[0].suppressed is None


def test_caps_are_per_channel() -> None:
    state = TriggerState()
    out = run(state, [tr("considering", tid="a"), tr("loyal", tid="b")], cfg())  # push, then email
    assert [d.suppressed for d in out] == [None, None]


def test_uncapped_rule_neither_counts_nor_is_held() -> None:
    state = TriggerState()
    config = cfg(caps=(Cap(window_seconds=86400, max=1),))
    run(state, [OrderIn("e1", "o1", "created", NOON), OrderIn("e2", "o2", "created", NOON)], config)
    out = fire(state, NOON + HOUR, config, T, C)
    assert [d.suppressed for d in out] == [None, None] and "sms" not in state.sends


def test_quiet_hours_deferral_across_midnight_in_new_york() -> None:
    ny = ZoneInfo("America/New_York")
    g = Guardrails()
    late = int(datetime(2024, 11, 4, 23, 30, tzinfo=ny).timestamp() * 1000)  # 04:30 UTC next day
    until = cast(int, quiet_until(late, ny, g.quiet_start, g.quiet_end))
    assert datetime.fromtimestamp(until / 1000, ny) == datetime(2024, 11, 5, 9, 0, tzinfo=ny)
    early = int(datetime(2024, 11, 5, 2, 0, tzinfo=ny).timestamp() * 1000)
    assert quiet_until(early, ny, g.quiet_start, g.quiet_end) == until
    day = int(datetime(2024, 11, 5, 12, 0, tzinfo=ny).timestamp() * 1000)
    assert quiet_until(day, ny, g.quiet_start, g.quiet_end) is None
    # through a rule, for a customer in New York
    state = TriggerState()
    out = run(state, [ProfileIn("p", late - 1, {}, "America/New_York"), tr("considering", at=late)], cfg())
    assert out[0].suppressed is None and out[0].decided_at == late and out[0].deliver_after == until


def test_quiet_hours_across_a_daylight_saving_change() -> None:
    ny = ZoneInfo("America/New_York")
    at = int(datetime(2024, 11, 2, 22, 0, tzinfo=ny).timestamp() * 1000)  # clocks go back at 02:00 on 3 Nov
    until = cast(int, quiet_until(at, ny, clock_time(21), clock_time(9)))
    assert until - at == 12 * HOUR  # 11 local hours plus the repeated hour


def test_quiet_hours_drop_policy() -> None:
    state = TriggerState()
    night = NOON + 12 * HOUR  # 22:00 in Shanghai
    run(state, [OrderIn("e1", "o1", "created", night - 30 * MIN)], cfg())
    out = fire(state, night, cfg(), T, C)
    assert [(d.rule.name, d.suppressed) for d in out] == [("unpaid_order_reminder", "quiet_hours")]


def test_holdout_share_within_one_point_over_100k_customers() -> None:
    share = 0.10
    held = sum(holdout_unit(T, f"c{i}", "campaign:x") < share for i in range(100_000))
    assert abs(held / 100_000 - share) <= 0.01
    # independent per campaign: a different campaign holds out different customers
    other = {i for i in range(10_000) if holdout_unit(T, f"c{i}", "campaign:y") < share}
    same = {i for i in range(10_000) if holdout_unit(T, f"c{i}", "campaign:x") < share}
    assert other != same and len(other & same) < len(same) / 2


def test_held_out_customers_get_a_holdout_record_and_take_the_cap_slot_a_send_would() -> None:
    """So the caps thin the control group exactly as the treated one: the next decision on the
    channel within a day is capped in both groups."""
    for config in (cfg(holdout_share=1.0), cfg()):
        state = TriggerState()
        first = run(state, [tr("considering")], config)
        assert first[0].suppressed == ("holdout" if config.guardrails.holdout_share else None)
        assert state.sends == {first[0].rule.channel: [first[0].deliver_after]}
        second = run(state, [tr("considering", tid="tr2", frm="aware", at=NOON + HOUR)], config)
        assert [d.suppressed for d in second] == ["frequency_cap"] * len(second) and second
    out = run(TriggerState(), [tr("considering")], cfg(global_holdout_share=1.0, holdout_share=1.0))
    assert out[0].suppressed == "holdout:global"


def test_a_held_out_record_carries_the_send_time_quiet_hours_applied() -> None:
    """Both groups' attribution windows start when the message goes out (or would have): a
    decision at night is delivered at the end of the quiet hours, held out or not."""
    night = NOON + 12 * HOUR  # 22:00 in Shanghai
    sent = run(TriggerState(), [tr("considering", at=night)], cfg())
    held = run(TriggerState(), [tr("considering", at=night)], cfg(holdout_share=1.0))
    assert sent[0].suppressed is None and held[0].suppressed == "holdout"
    assert held[0].decided_at == night
    assert held[0].deliver_after == sent[0].deliver_after == night + 11 * HOUR


def test_a_rule_that_drops_at_night_drops_for_the_control_group_too() -> None:
    """Neither group is touched when quiet hours drop the message (the unpaid-order reminder
    does): no control trial without a treatment trial to match it."""
    night = NOON + 12 * HOUR
    state = TriggerState()
    run(state, [OrderIn("e1", "o1", "created", night - 30 * MIN)], cfg(holdout_share=1.0))
    out = fire(state, night, cfg(holdout_share=1.0), T, C)
    assert [(d.rule.name, d.suppressed) for d in out] == [("unpaid_order_reminder", "quiet_hours")]


def test_guardrail_order_consent_before_holdout() -> None:
    state = TriggerState()
    out = run(state, [ProfileIn("p", NOON, {"push": False}), tr("considering")], cfg(holdout_share=1.0))
    assert out[0].suppressed == "consent"


def test_holdout_is_deterministic() -> None:
    a = run(TriggerState(), [tr("considering")], TriggerConfig())
    b = run(TriggerState(), [tr("considering")], TriggerConfig())
    assert a == b


# --- state and config ------------------------------------------------------------------------
def test_state_round_trips_through_its_encoding() -> None:
    state = TriggerState()
    run(state, [ProfileIn("p", NOON, {"sms": False}, "Europe/Paris", "1990-01-02"), CartIn("c", "add", NOON)], cfg())
    run(state, [OrderIn("e1", "o1", "created", NOON), tr("considering")], cfg())
    again = decode_state(encode_state(state))
    assert again == state
    assert len(encode_state(state)) < 600


def load_trigger_config_from(data: dict[str, Any], tmp: Path | None = None) -> TriggerConfig:
    import json
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "rules.json"
    path.write_text(json.dumps(data))
    return load_trigger_config(path)


def test_config_file_changes_a_rule_and_guardrails() -> None:
    config = load_trigger_config_from(
        {"rules": [{"name": "welcome", "channel": "sms"}], "guardrails": {"quiet_start": "22:00", "holdout_share": 0.2}}
    )
    assert (
        cast(TriggerRule, config.rule("welcome")).channel == "sms"
        and cast(TriggerRule, config.rule("welcome")).to == "new"
    )
    assert config.guardrails.quiet_start == clock_time(22) and config.guardrails.holdout_share == 0.2


def test_config_file_can_disable_a_rule() -> None:
    config = load_trigger_config_from({"rules": [{"name": "welcome", "enabled": False}]})
    assert run(TriggerState(), [tr("new", "lifecycle", "prospect")], config) == []


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"rules": [{"name": "welcome", "channel": "fax"}]}, "rules.welcome.channel"),
        ({"guardrails": {"holdout_share": 2}}, "guardrails.holdout_share"),
        ({"guardrails": {"default_timezone": "Mars/Olympus"}}, "guardrails.default_timezone"),
        ({"rules": [{"name": "new_one", "on": "transition", "action": "a", "campaign": "c", "channel": "sms",
                     "topic": "outreach"}]}, "rules.new_one"),
    ],
)  # fmt: skip
def test_bad_config_names_the_key(data: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_trigger_config_from(data)


def test_every_default_rule_has_campaign_channel_and_topic() -> None:
    for rule in TriggerConfig().rules:
        assert rule.campaign and rule.channel in ("sms", "email", "push", "in_app")
        assert rule.topic in ("coupons", "reminders", "outreach")
    assert timedelta(
        seconds=cast(TriggerRule, TriggerConfig().rule("unpaid_order_reminder")).delay_seconds
    ) == timedelta(minutes=30)
    assert timedelta(
        seconds=cast(TriggerRule, TriggerConfig().rule("abandoned_cart_reminder")).delay_seconds
    ) == timedelta(hours=24)


# --- properties ------------------------------------------------------------------------------

_INPUTS: list[Input] = [
    tr("considering", tid="t1", at=NOON),
    tr("first_purchase", tid="t2", at=NOON + HOUR),
    tr("declining", "lifecycle", "new", tid="t3", at=NOON + 2 * DAY),
    OrderIn("e1", "o1", "created", NOON),
    OrderIn("e2", "o2", "created", NOON + MIN),
    OrderIn("e3", "o1", "paid", NOON + 10 * MIN),
    CartIn("e4", "add", NOON + 5 * MIN),
    ProfileIn("e5", NOON - HOUR, {"email": False}, "Europe/Berlin", "1990-03-07"),
    OrderIn("e6", "o3", "paid", NOON + 3 * DAY),
]


def _decisions(items: Sequence[Input]) -> list[tuple[str, str | None, int]]:
    state = TriggerState()
    out = [(d.trigger_id, d.suppressed, d.deliver_after) for d in run(state, items, cfg())]
    out += [(d.trigger_id, d.suppressed, d.deliver_after) for d in fire(state, NOON + 30 * DAY, cfg(), T, C)]
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(_INPUTS) - 1), max_size=8))
def test_any_duplication_of_inputs_gives_the_same_decisions(extra: list[int]) -> None:
    items = list(_INPUTS)
    for i in extra:  # a repeat arrives right after the original
        items.insert(items.index(_INPUTS[i]) + 1, _INPUTS[i])
    assert _decisions(items) == _decisions(_INPUTS)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 40))
def test_timers_fired_along_the_way_change_nothing(split_hours: int) -> None:
    """Firing at an intermediate watermark, then at the end, decides what firing once at the end does."""
    a, b = TriggerState(), TriggerState()
    run(a, _INPUTS, cfg())
    run(b, _INPUTS, cfg())
    once = fire(a, NOON + 30 * DAY, cfg(), T, C)
    twice = fire(b, NOON + split_hours * HOUR, cfg(), T, C) + fire(b, NOON + 30 * DAY, cfg(), T, C)
    assert [d.trigger_id for d in once] == [d.trigger_id for d in twice]


def test_bad_rules_file_stops_the_worker_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from services.triggers.__main__ import main

    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"rules": [{"name": "welcome", "channel": "fax"}]}))
    monkeypatch.setenv("CRM_TRIGGER_RULES_FILE", str(path))
    with pytest.raises(SystemExit, match=r"rules\.welcome\.channel"):
        main()


LATENESS = 5 * MIN


@st.composite
def trigger_inputs(draw: st.DrawFn) -> list[Input]:
    """Orders created and paid, cart adds and stage transitions of one customer over 60 days."""
    items: list[Input] = []
    for i in range(draw(st.integers(1, 12))):
        at = NOON + draw(st.integers(0, 60 * DAY))
        kind = draw(st.sampled_from(["created", "paid", "cart", "transition"]))
        if kind == "cart":
            items.append(CartIn(f"c{i}", "add", at))
        elif kind == "transition":
            items.append(tr(draw(st.sampled_from(["considering", "first_purchase", "loyal"])), at=at, tid=f"t{i}"))
        else:
            items.append(OrderIn(f"o{i}", f"order{i % 4}", kind, at))
    return items


@settings(max_examples=150, deadline=None)
@given(trigger_inputs(), st.data())
def test_decisions_do_not_depend_on_arrival_order_or_batches_within_the_lateness(
    items: list[Input], data: st.DataObject
) -> None:
    """Inputs arriving out of order by up to the allowed lateness, cut into any batches, each
    batch followed by the watermark, give exactly the decisions of one pass in event-time order."""
    end = max(i.time for i in items) + 30 * DAY
    reference = TriggerState()
    expected = take(reference, items, end, cfg(), T, C)[0]

    delays = [data.draw(st.integers(0, LATENESS)) for _ in items]
    arrival = [i for _, i in sorted(zip(delays, items, strict=True), key=lambda x: x[1].time + x[0])]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(arrival) - 1)), max_size=6)))
    state, got, latest, start = TriggerState(), [], 0, 0
    for stop in [*cuts, len(arrival)]:
        batch, start = arrival[start:stop], stop
        if batch:
            latest = max(latest, *(i.time for i in batch))
            got += take(state, batch, latest - LATENESS, cfg(), T, C)[0]
    got += take(state, [], end, cfg(), T, C)[0]
    assert [d.trigger_id for _, d in got] == [d.trigger_id for _, d in expected]
    assert [(d.decided_at, d.deliver_after, d.suppressed) for _, d in got] == [
        (d.decided_at, d.deliver_after, d.suppressed) for _, d in expected
    ]
    assert state == reference


def test_a_pending_input_survives_encoding() -> None:
    state = TriggerState()
    early = OrderIn("o1", "order1", "created", NOON + HOUR)
    assert take(state, [early], NOON, cfg(), T, C) == ([], 0, [])
    assert state.pending == [early] and state.next_due() == early.time
    back = decode_state(encode_state(state))
    assert back.pending == [early] and back.clock == NOON


def test_an_input_the_rules_cannot_apply_is_rejected_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.triggers import domain

    real = domain.apply

    def choking(state: TriggerState, item: Any, *args: Any) -> list[Decision]:
        if item.event_id == "bad":
            state.paid_count += 100  # a half-made change, then the failure
            raise RuntimeError("cannot apply")
        return real(state, item, *args)

    monkeypatch.setattr(domain, "apply", choking)
    good: list[Input] = [OrderIn("p0", "o0", "paid", NOON), OrderIn("p1", "o1", "paid", NOON + 10 * DAY)]
    bad = OrderIn("bad", "o2", "paid", NOON + DAY)
    with_bad, without = TriggerState(), TriggerState()
    made, _, rejected = take(with_bad, [*good, bad], NOON + 40 * DAY, cfg(), T, C)
    assert [(cast(OrderIn, i).event_id, reason) for i, reason in rejected] == [
        ("bad", "unprocessable: RuntimeError: cannot apply")
    ]
    assert [d for _, d in made] == [d for _, d in take(without, good, NOON + 40 * DAY, cfg(), T, C)[0]]
    assert with_bad == without


def test_a_repeated_paid_order_long_after_changes_nothing_and_one_older_than_a_year_is_too_late() -> None:
    first = OrderIn("p0", "o0", "paid", NOON)
    state = TriggerState()
    take(state, [first, OrderIn("p1", "o1", "paid", NOON + 10 * DAY)], NOON + 10 * DAY, cfg(), T, C)
    # a hundred other inputs later (more than any count-bound memory would keep), months on
    carts: list[Input] = [CartIn(f"c{i}", "add", NOON + 20 * DAY + i * HOUR) for i in range(100)]
    take(state, carts, NOON + 200 * DAY, cfg(), T, C)
    before = encode_state(state)
    made, late, rejected = take(state, [first], NOON + 200 * DAY, cfg(), T, C)
    assert (made, late, rejected) == ([], 1, []) and state.paid_count == 2
    assert encode_state(state) == before
    take(state, [], NOON + 400 * DAY, cfg(), T, C)
    made, late, rejected = take(state, [first], NOON + 400 * DAY, cfg(), T, C)
    assert made == [] and [reason.split(":")[0] for _, reason in rejected] == ["too_late"]


def test_a_time_zone_naming_a_folder_falls_back_to_the_default_zone() -> None:
    state = TriggerState()
    take(state, [ProfileIn("pr", NOON, {}, "Asia")], NOON, cfg(), T, C)
    made, _, rejected = take(state, [tr("considering", at=NOON + MIN)], NOON + MIN, cfg(), T, C)
    assert rejected == [] and [d.rule.name for _, d in made] == ["considering_coupon"]


def _fatigue_config(n: int, holdout: float = 0.0) -> TriggerConfig:
    rules = tuple(
        r.model_copy(update={"fatigue": n}) if r.name == "considering_coupon" else r for r in TriggerConfig().rules
    )
    return TriggerConfig(rules=rules, guardrails=Guardrails(holdout_share=holdout, global_holdout_share=0.0))


def _coupons(state: TriggerState, config: TriggerConfig, days: list[int]) -> list[str | None]:
    """The outcome of a transition into `considering` on each of `days` (the coupon rule)."""
    out = []
    for d in days:
        made = run(state, [tr("considering", frm="aware", at=NOON + d * DAY, tid=f"tr{d}")], config)
        out += [x.suppressed for x in made if x.rule.name == "considering_coupon"]
    return out


def test_fatigue_skips_a_customer_whose_last_touches_all_went_unanswered() -> None:
    """Fatigue 2: after two coupons whose 7-day windows closed without a paid order, the third is
    suppressed as `fatigue`; one that is still open does not count yet."""
    config = _fatigue_config(2)
    # on day 12 the second window is still open
    assert _coupons(TriggerState(), config, [0, 10, 12]) == [None, None, None]
    assert _coupons(TriggerState(), config, [0, 10, 20]) == [None, None, "fatigue"]


def test_an_order_in_a_window_answers_the_touch_and_an_order_at_its_time_does_not() -> None:
    config = _fatigue_config(2)
    state = TriggerState()
    _coupons(state, config, [0])
    run(state, [OrderIn("p1", "o1", "paid", NOON + 3 * DAY)], config)
    assert _coupons(state, config, [10, 20]) == [None, None]  # the first touch was answered
    state = TriggerState()
    _coupons(state, config, [0, 10])
    run(state, [OrderIn("p1", "o1", "paid", NOON + 10 * DAY)], config)  # at the second touch's time: outside
    assert _coupons(state, config, [20]) == ["fatigue"]


def test_held_out_touches_count_towards_fatigue_so_both_groups_are_thinned_alike() -> None:
    config = _fatigue_config(2, holdout=1.0)
    assert _coupons(TriggerState(), config, [0, 10, 20]) == ["holdout", "holdout", "fatigue"]
    assert _coupons(TriggerState(), _fatigue_config(0, holdout=1.0), [0, 10, 20]) == ["holdout"] * 3


# --- scheduled campaigns (member day) ---------------------------------------------------------
def camp(run_at: int = NOON, rid: str = "r1", channel: str = "sms", quiet: str = "defer") -> CampaignIn:
    return CampaignIn(rid, "member-day", run_at, "member_day_coupon", channel, "coupons", ("coupon", 20.0, 20.0), quiet)


def test_a_campaign_request_is_decided_once_through_the_guardrails() -> None:
    state = TriggerState()
    out = run(state, [camp(), camp()], cfg())  # the same request twice (a redelivery)
    assert [(d.rule.name, d.rule.campaign, d.rule.topic, d.suppressed) for d in out] == [
        ("member_day", "member-day", "coupons", None)
    ]
    assert out[0].trigger_id == trigger_id("member_day", T, C, f"campaign:member-day:{NOON}")
    assert out[0].offer is not None and out[0].offer.cost == 20.0
    # the next run of the campaign is another decision; the daily cap of the channel holds it
    later = run(state, [camp(NOON + HOUR, rid="r2")], cfg())
    assert [d.suppressed for d in later] == ["frequency_cap"]


def test_a_campaign_request_respects_consent_quiet_hours_and_holdout() -> None:
    opted_out = run(TriggerState(), [ProfileIn("p", NOON - 1, {"sms": False}), camp()], cfg())
    assert [d.suppressed for d in opted_out] == ["consent"]
    night = NOON + 12 * HOUR  # 22:00 in Shanghai
    deferred = run(TriggerState(), [camp(night)], cfg())[0]
    assert deferred.suppressed is None and deferred.deliver_after == NOON + 23 * HOUR  # 09:00 next morning
    assert run(TriggerState(), [camp(night, quiet="drop")], cfg())[0].suppressed == "quiet_hours"
    held = run(TriggerState(), [camp()], cfg(holdout_share=1.0))[0]
    assert (held.suppressed, held.deliver_after) == ("holdout", NOON)


def test_a_campaign_request_goes_after_the_transitions_of_its_instant_and_survives_in_the_state() -> None:
    assert order_key(camp()) > order_key(tr("considering", at=NOON))
    state = TriggerState(pending=[camp(NOON + DAY)])
    again = decode_state(encode_state(state))
    assert again.pending == [camp(NOON + DAY)]
    assert again.pending[0].rule == camp().rule
