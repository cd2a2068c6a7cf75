import struct
from pathlib import Path

import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from services.common.avro import MAGIC, Codec, crc64_avro, default_codec, schema_dir
from services.common.errors import SchemaError


def test_crc64_avro_matches_the_specification_vector() -> None:
    # Avro's own test data: the parsing fingerprint of "int" is 8247732601305521295.
    assert crc64_avro(b'"int"') == 8247732601305521295


@pytest.mark.parametrize("name", default_codec().names)
def test_header_is_marker_plus_little_endian_fingerprint(name: str) -> None:
    codec = default_codec()
    canonical = to_parsing_canonical_form(codec._entry(name).parsed)
    assert codec.fingerprint(name).hex() == fingerprint(canonical, "CRC-64-AVRO")
    assert codec.fingerprint(name) == struct.pack("<Q", crc64_avro(canonical.encode()))


def test_round_trip_keeps_the_record() -> None:
    codec = default_codec()
    record = {
        "event_id": "e1",
        "customer_id": "c1",
        "tenant": "t",
        "event_time": 1700000000123,
        "order_id": "o1",
        "status": "paid",
        "amount": 12.5,
        "items": [{"product_id": "p", "quantity": 2, "price": 6.25}],
    }
    data = codec.encode("crm.events.Order", record)
    assert data[:2] == MAGIC
    name, back = codec.decode(data)
    assert name == "crm.events.Order"
    assert back["amount"] == 12.5 and back["status"] == "paid" and back["items"][0]["quantity"] == 2
    assert int(back["event_time"].timestamp() * 1000) == 1700000000123
    assert back["currency"] == "CNY"  # default filled in


def test_unknown_fingerprint_is_rejected_with_a_clear_error() -> None:
    data = MAGIC + b"\x00" * 8 + b"\x02a"
    with pytest.raises(SchemaError, match="unknown schema fingerprint 0000000000000000"):
        default_codec().decode(data)


def test_message_without_marker_is_rejected() -> None:
    with pytest.raises(SchemaError, match="C3 01"):
        default_codec().decode(b'{"json": true}')


def test_record_not_matching_schema_raises_schema_error() -> None:
    with pytest.raises(SchemaError, match="crm.events.Cart"):
        default_codec().encode("crm.events.Cart", {"event_id": "e"})


def test_unknown_schema_name_lists_known_ones() -> None:
    with pytest.raises(SchemaError, match="crm.events.Browse"):
        default_codec().encode("crm.events.Nope", {})


def test_empty_schema_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="no .avsc"):
        Codec(tmp_path)


def test_schema_dir_is_the_repository_contract() -> None:
    assert (schema_dir() / "order.avsc").exists()


def _transition() -> dict[str, object]:
    return {"transition_id": "x1", "tenant": "t", "customer_id": "c1", "model": "aipl", "from_stage": None,
            "to_stage": "A", "at": 1_700_000_000_000, "cause": "e1", "seq": 3}  # fmt: skip


def test_a_record_of_an_earlier_schema_version_reads_as_the_current_one() -> None:
    """A transition written before `accepted_at` existed (schemas/previous/) reads with it null,
    through both the full decoder and the hot-path reader; the current version carries it."""
    codec = default_codec()
    old = Codec(schema_dir() / "previous")  # the earlier versions alone, as a writer not yet upgraded has them
    written = old.encode("crm.stage.StageTransition", _transition())
    assert written[:10] != codec.encode("crm.stage.StageTransition", {**_transition(), "accepted_at": None})[:10]
    name, record = codec.decode(written)
    assert name == "crm.stage.StageTransition" and record["accepted_at"] is None and record["seq"] == 3
    name, record = codec.reader({"crm.stage.StageTransition": ("tenant", "seq", "accepted_at")})(written)
    assert record["accepted_at"] is None and record["customer_id"] == "c1"
    now = codec.encode("crm.stage.StageTransition", {**_transition(), "accepted_at": 1_700_000_000_500})
    fast = codec.reader({"crm.stage.StageTransition": ("tenant", "seq", "accepted_at")})(now)[1]
    assert fast["accepted_at"] == 1_700_000_000_500


def test_an_earlier_version_without_its_current_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "previous").mkdir()
    (tmp_path / "order.avsc").write_text((schema_dir() / "order.avsc").read_text())
    (tmp_path / "previous" / "stage_transition.1.avsc").write_text(
        (schema_dir() / "previous" / "stage_transition.1.avsc").read_text()
    )
    with pytest.raises(SchemaError, match="no current schema crm.stage.StageTransition"):
        Codec(tmp_path)
