"""Dataset mapping (shared/DOMAIN.md "Datasets for replay") and event -> fact mapping."""

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from crm.datasets import read_dataset
from services.common.avro import default_codec
from services.ingest.validate import Limits, RawItem, schema_name, validate_event
from services.stager.facts import to_fact
from services.stager.rules import Fact, Kind

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _facts(events: Iterable[dict[str, Any]]) -> list[tuple[str, str, Fact]]:
    codec = default_codec()
    out: list[tuple[str, str, Fact]] = []
    for event in events:
        kind, record = validate_event(RawItem(b"", event), codec, Limits(), 2_000_000_000_000)
        _, decoded = codec.decode(codec.encode(schema_name(kind), record))
        out.append(cast(tuple[str, str, Fact], to_fact(schema_name(kind), decoded)))
    return out


def test_taobao_behaviours_map_to_events(tmp_path: Path) -> None:
    path = tmp_path / "tb.csv"
    path.write_text(
        "1,10,100,pv,1511544070\n1,11,100,fav,1511544000\n1,12,100,cart,1511544100\n1,12,100,buy,1511544200\n"
    )
    events = read_dataset(path, "taobao", "t")
    assert [e["type"] for e in events] == ["follow", "browse", "cart", "order"]  # sorted by time
    assert events[0]["event_id"] == "taobao:2" and events[0]["target_type"] == "product"
    facts = _facts(events)
    assert [f.kind for _, _, f in facts] == [Kind.FAVOURITE, Kind.BROWSE, Kind.CART_ADD, Kind.ORDER_PAID]
    assert facts[1][2].time == 1511544070000 and facts[1][:2] == ("t", "1")


def test_cdnow_lines_are_paid_orders_with_amounts() -> None:
    events = read_dataset(DATA / "cdnow" / "CDNOW_sample.txt", "cdnow", "c")
    assert len(events) == 6919
    first = events[0]
    assert first["status"] == "paid" and first["event_time"] == 852076800000  # 1997-01-01
    facts = _facts(events[:50])
    assert all(f.kind == Kind.ORDER_PAID and f.amount_cents > 0 for _, _, f in facts)


def test_online_retail_invoices_are_paid_orders() -> None:
    events = read_dataset(DATA / "online_retail" / "online_retail_invoices_mwoitek.csv", "online-retail", "r")
    assert len(events) == 18532
    assert events[0]["customer_id"] == "17850" and events[0]["order_id"] == "536365"
    assert abs(events[0]["amount"] - 139.12) < 1e-9


def test_brand_follow_joins_and_product_follow_is_a_favourite() -> None:
    base = {"type": "follow", "customer_id": "c", "tenant": "t", "event_time": 1_600_000_000_000}
    facts = _facts(
        [
            {**base, "event_id": "1", "target_type": "brand", "target_id": "b"},
            {**base, "event_id": "2", "target_type": "product", "target_id": "p"},
            {**base, "event_id": "3", "target_type": "store", "target_id": "s", "action": "unfollow"},
        ]
    )
    assert [f.kind for _, _, f in facts] == [Kind.JOIN, Kind.FAVOURITE, Kind.UNFOLLOW]
