import json
from typing import Any

from services.common.avro import default_codec, schema_dir
from services.common.constants import EVENT_TYPES, TOPICS
from services.ingest.validate import schema_name


def _schemas() -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in schema_dir().glob("*.avsc")}


def test_every_schema_is_in_the_crm_namespace() -> None:
    for name, schema in _schemas().items():
        assert schema["namespace"].startswith("crm."), name


def test_event_schemas_carry_the_common_fields() -> None:
    codec = default_codec()
    for event_type in EVENT_TYPES:
        fields = {f["name"]: f for f in codec.schema(schema_name(event_type))["fields"]}
        for required in ("event_id", "customer_id", "tenant"):
            assert fields[required]["type"] == "string", (event_type, required)
        assert fields["event_time"]["type"] == {"type": "long", "logicalType": "timestamp-millis"}


def test_optional_fields_have_defaults_so_schemas_can_evolve() -> None:
    for name, schema in _schemas().items():
        for field in schema["fields"]:
            if isinstance(field["type"], list) and "null" in field["type"]:
                assert "default" in field, (name, field["name"])


def test_every_topic_names_a_schema_of_the_contract() -> None:
    names = set(default_codec().names)
    for spec in TOPICS:
        assert spec.schema in names, spec.name
        assert spec.partitions == 12
