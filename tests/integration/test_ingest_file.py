"""`crm ingest file`: a bulk NDJSON load through the same validation and produce path."""

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crm.cli import cli
from services.common.avro import default_codec
from services.common.tail import read_topic
from tests.conftest import StackInfo


async def _collect(bootstrap: str, topic: str, run: str) -> list[dict[str, Any]]:
    return [r async for r in read_topic(bootstrap, topic, default_codec()) if run in json.dumps(str(r))]


def test_file_load_produces_valid_lines_and_dead_letters_bad_ones(
    stack: StackInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_KAFKA_BOOTSTRAP", stack.kafka_bootstrap)
    run = uuid.uuid4().hex[:10]
    now = int(time.time() * 1000)
    lines = [
        json.dumps(
            {
                "type": "follow",
                "event_id": f"{run}-{i}",
                "customer_id": f"{run}-c{i}",
                "tenant": "t",
                "event_time": now - i,
                "target_type": "product",
                "target_id": f"p{i}",
            }
        )
        for i in range(2500)
    ]
    lines.insert(1000, f'{{"oops {run}')
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(lines) + "\n")

    result = CliRunner().invoke(cli, ["ingest", "file", str(path), "--format", "ndjson"])
    assert result.exit_code == 0, result.output
    assert "accepted 2500, rejected 1" in result.output
    assert "invalid_json: 1" in result.output

    follows = asyncio.run(_collect(stack.kafka_bootstrap, "crm.events.follow", run))
    assert sorted(int(r["event_id"].split("-")[1]) for r in follows) == list(range(2500))
    dead = asyncio.run(_collect(stack.kafka_bootstrap, "crm.events.dlq", run))
    assert len(dead) == 1 and dead[0]["source"] == "file:events.ndjson"

    # crm tail decodes a topic to JSON lines, times in ISO 8601
    tailed = CliRunner().invoke(cli, ["tail", "crm.events.follow"])
    assert tailed.exit_code == 0, tailed.output
    mine = [json.loads(line) for line in tailed.output.splitlines() if run in line]
    assert len(mine) == 2500
    assert mine[0]["event_time"].endswith("Z") and mine[0]["target_type"] == "product"
