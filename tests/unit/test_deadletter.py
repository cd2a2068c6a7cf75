"""Dead letters of the stream workers carry where the input was read, fit in a Kafka message, and
have an outbox id that a record on Kafka can be matched with."""

from services.common.avro import default_codec
from services.common.deadletter import (
    MAX_ORIGINAL_BYTES,
    MAX_REASON_CHARS,
    dead_letter,
    dead_letter_id,
    encode_dead_letter,
)
from services.common.messages import Message
from services.common.outbox import record_id, unpack

CODEC = default_codec()


def test_a_dead_letter_keeps_topic_partition_offset_and_reason() -> None:
    msg = Message("crm.events.order", 7, 1234, b"\x00garbage")
    ident, entry = dead_letter(CODEC, "stager:g", msg, "undecodable: SchemaError: bad")
    _, topic, key, value = unpack(entry)
    schema, record = CODEC.decode(value)
    assert (topic, schema) == ("crm.events.dlq", "crm.events.DeadLetter")
    assert (record["topic"], record["partition"], record["offset"]) == ("crm.events.order", 7, 1234)
    assert record["original"] == b"\x00garbage" and record["reason"] == "undecodable: SchemaError: bad"
    assert record_id(schema, record) == ident == dead_letter_id("stager:g", msg)


def test_a_null_value_becomes_empty_bytes_and_a_huge_one_is_cut() -> None:
    _, entry = dead_letter(CODEC, "triggers:g", Message("t", 0, 1, None), "undecodable: null value")  # type: ignore[arg-type]
    assert CODEC.decode(unpack(entry)[3])[1]["original"] == b""
    _, entry = dead_letter(CODEC, "triggers:g", Message("t", 0, 2, b"x" * (3 * MAX_ORIGINAL_BYTES)), "too big")
    record = CODEC.decode(unpack(entry)[3])[1]
    assert len(record["original"]) == MAX_ORIGINAL_BYTES
    assert f"cut to its first {MAX_ORIGINAL_BYTES} of" in record["reason"]


def test_each_position_and_source_has_its_own_id() -> None:
    a = dead_letter_id("stager:g", Message("t", 0, 1, b""))
    assert a != dead_letter_id("stager:g", Message("t", 0, 2, b""))
    assert a != dead_letter_id("triggers:g", Message("t", 0, 1, b""))


def test_ingest_and_engines_share_one_envelope() -> None:
    """What ingest refuses (not read from Kafka) has no position; a reason that UTF-8 cannot carry
    is escaped and a long one cut, so the envelope always encodes."""
    value = encode_dead_letter(
        CODEC,
        original=b"y" * 50,
        topic="crm.events.order",
        reason="bad \udcff" + "r" * 5000,
        received_at=1,
        source="http",
        keep=10,
    )
    record = CODEC.decode(value)[1]
    assert (record["partition"], record["offset"]) == (-1, -1)
    assert record["original"] == b"y" * 10
    assert record["reason"].startswith("bad \\udcff") and len(record["reason"]) == MAX_REASON_CHARS
    assert record["reason"].endswith("(original cut to its first 10 of 50 bytes)")
