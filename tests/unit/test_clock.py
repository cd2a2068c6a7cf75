"""The event-time clock shared by the stager and the triggers."""

from services.common.clock import EventClock, ShardClock, merge_shard_clocks, shard_value, tenant_clock


def test_each_shard_trails_its_own_latest_event_by_the_lateness() -> None:
    clock = EventClock()
    clock.saw(0, 10_000, now=0.0)
    clock.saw(1, 4_000, now=0.0)
    clock.settle(1_000)
    assert clock.shards == {0: ShardClock(10_000, 9_000), 1: ShardClock(4_000, 3_000)}
    assert clock.watermark == 3_000 and clock.latest == 10_000


def test_an_idle_tenant_moves_every_owned_shard_to_its_latest_event_time() -> None:
    clock = EventClock()
    clock.saw(0, 10_000, now=0.0)
    clock.settle(1_000)
    assert not clock.flush_idle({0, 1}, now=1.0, idle_seconds=2.0, wall_clock_lateness_ms=None)
    assert clock.flush_idle({0, 1}, now=2.5, idle_seconds=2.0, wall_clock_lateness_ms=None)
    assert clock.shards == {0: ShardClock(10_000, 10_000), 1: ShardClock(0, 10_000)}


def test_an_idle_worker_follows_the_tenant_time_other_workers_wrote() -> None:
    stored = {b"shop|0": b"50000:49000", b"shop|1": b"9000:8000", b"other|5": b"7:7"}
    mine = {"shop": EventClock()}
    mine["shop"].saw(1, 9_000, now=0.0)
    merge_shard_clocks(mine, stored, owned={1})
    assert mine["shop"].latest == 50_000  # from shard 0, which another worker owns
    assert 0 not in mine["shop"].shards  # not this worker's to move or write
    assert mine["shop"].shards[1] == ShardClock(9_000, 8_000)
    assert mine["other"].latest == 7 and mine["other"].shards == {}
    mine["shop"].flush_idle({1}, now=10.0, idle_seconds=2.0, wall_clock_lateness_ms=None)
    assert mine["shop"].shards[1].watermark == 50_000


def test_tenant_clock_over_every_workers_shards() -> None:
    stored = {b"shop|0": b"50000:49000", b"shop|1": b"9000:8000", b"other|5": b"7:7"}
    assert tenant_clock(stored, "shop") == (50_000, 8_000)
    assert tenant_clock(stored, "nobody") == (0, 0)


def test_a_topic_read_behind_holds_its_shards_watermark_and_an_idle_one_does_not() -> None:
    clock = EventClock()
    clock.saw(3, 10_000, 0.0, "orders")
    clock.saw(3, 4_000, 0.0, "transitions")
    clock.saw(5, 9_000, 0.0, "orders")
    clock.settle(1_000, behind={("transitions", 3)})
    assert clock.shards[3].watermark == 3_000  # held at what the lagging topic has shown, less the lateness
    assert clock.shards[5].watermark == 8_000  # another shard is not held
    clock.settle(1_000, behind=())  # the transitions topic was read to its end
    assert clock.shards[3].watermark == 9_000


def test_a_topic_behind_that_never_showed_the_tenant_holds_its_shard_at_zero() -> None:
    clock = EventClock()
    clock.saw(2, 50_000, 0.0, "orders")
    clock.settle(0, behind={("browse", 2)})
    assert clock.shards[2].watermark == 0


def test_idle_flush_waits_until_every_input_is_read() -> None:
    clock = EventClock()
    clock.saw(1, 7_000, 0.0, "orders")
    assert not clock.flush_idle({1}, 100.0, 2.0, None, caught_up=False)
    assert clock.flush_idle({1}, 100.0, 2.0, None, caught_up=True)
    assert clock.shards[1].watermark == 7_000


def test_following_an_upstream_service_the_watermark_never_passes_its_progress() -> None:
    clock = EventClock(ceilings={})
    clock.saw(4, 90_000, 0.0, "orders")
    clock.settle(1_000)
    assert clock.shards[4].watermark == 0  # nothing declared complete upstream yet
    clock.ceil(4, 50_000)
    clock.settle(1_000)
    assert clock.shards[4].watermark == 50_000
    assert clock.flush_idle({4}, 100.0, 2.0, None)
    assert clock.shards[4].watermark == 50_000  # idle: as far as upstream declared, not the latest input
    clock.ceil(4, 120_000)
    clock.flush_idle({4}, 100.0, 2.0, None)
    assert clock.shards[4].watermark == 120_000


def test_a_declared_ceiling_survives_a_restart() -> None:
    """The upstream progress records that declared a ceiling lie behind the fence after a crash and
    are not read again: the ceiling is written with the shard clock and read back from it."""
    clock = EventClock(ceilings={})
    clock.saw(4, 100_000, 0.0, "t")
    clock.ceil(4, 90_000)
    clock.ceil(7, 80_000)  # declared before any input of the shard
    clock.settle(0)
    ceilings = clock.ceilings or {}
    stored = {f"shop|{p}".encode(): shard_value(clock.shard(p), ceilings.get(p, 0)).encode() for p in (4, 7)}
    restored: dict[str, EventClock] = {}
    merge_shard_clocks(restored, stored, None, lambda: EventClock(ceilings={}))
    assert restored["shop"].ceilings == {4: 90_000, 7: 80_000}
    restored["shop"].flush_idle({4, 7}, 1e9, 1.0, None)
    assert (restored["shop"].shards[4].watermark, restored["shop"].shards[7].watermark) == (90_000, 80_000)
    assert tenant_clock(stored, "shop") == (100_000, 0)  # old "<latest>:<watermark>" readers still parse it
