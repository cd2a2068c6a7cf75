"""Public e-commerce datasets (Taobao user behaviour, CDNOW, UCI Online Retail) mapped to our events.

Each reader yields event dicts in the ingest JSON shape, with a deterministic `event_id` from the
dataset and line number, so a replay always produces the same events.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common.errors import CrmError

__all__ = ["FORMATS", "DatasetError", "read_dataset"]

FORMATS = ("taobao", "cdnow", "online-retail", "ndjson")

_TAOBAO: dict[str, tuple[str, dict[str, Any]]] = {
    "pv": ("browse", {}),
    "fav": ("follow", {"target_type": "product", "action": "follow"}),
    "cart": ("cart", {"action": "add"}),
    "buy": ("order", {"status": "paid", "amount": 0.0}),
}


class DatasetError(CrmError, ValueError):
    """A dataset line that cannot be mapped; the message names file and line."""


def _day_ms(text: str, fmt: str) -> int:
    return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp() * 1000)


def _taobao(path: Path, tenant: str) -> Iterator[dict[str, Any]]:
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            user, item, category, behaviour, ts = line.strip().split(",")
            kind, extra = _TAOBAO[behaviour]
            event: dict[str, Any] = {
                "type": kind,
                "event_id": f"taobao:{n}",
                "customer_id": user,
                "tenant": tenant,
                "event_time": int(ts) * 1000,
                **extra,
            }
            if kind == "browse":
                event.update(product_id=item, category_id=category)
            elif kind == "follow":
                event["target_id"] = item
            elif kind == "cart":
                event["product_id"] = item
            else:
                event.update(order_id=f"taobao-{n}", items=[{"product_id": item}])
            yield event


def _cdnow(path: Path, tenant: str) -> Iterator[dict[str, Any]]:
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or not parts[0].isdigit():
                continue  # header
            if len(parts) == 5:  # CDNOW_sample: orig_id sample_id date cds value
                parts = [parts[0], *parts[2:]]
            customer, day, _cds, value = parts
            yield {
                "type": "order",
                "event_id": f"cdnow:{n}",
                "customer_id": customer.lstrip("0") or "0",
                "tenant": tenant,
                "event_time": _day_ms(day, "%Y%m%d"),
                "order_id": f"cdnow-{n}",
                "status": "paid",
                "amount": float(value),
            }


def _online_retail(path: Path, tenant: str) -> Iterator[dict[str, Any]]:
    with path.open(newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), 2):
            customer = row["CustomerID"].split(".")[0]
            yield {
                "type": "order",
                "event_id": f"online-retail:{n}",
                "customer_id": customer,
                "tenant": tenant,
                "event_time": _day_ms(row["InvoiceDate"][:10], "%Y-%m-%d"),
                "order_id": row["InvoiceNo"],
                "status": "paid",
                "amount": round(float(row["TotalPrice"]), 2),
            }


def _ndjson(path: Path, tenant: str) -> Iterator[dict[str, Any]]:
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise DatasetError(f"{path}:{n}: not JSON: {exc}") from exc
                event["tenant"] = tenant
                yield event


_READERS = {"taobao": _taobao, "cdnow": _cdnow, "online-retail": _online_retail, "ndjson": _ndjson}


def read_dataset(path: Path, fmt: str, tenant: str) -> list[dict[str, Any]]:
    """Every event of the file, in event-time order (ties keep file order)."""
    if fmt not in _READERS:
        raise DatasetError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    try:
        events = list(_READERS[fmt](path, tenant))
    except (KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: not a {fmt} file: {exc}") from exc
    events.sort(key=lambda e: e["event_time"] if isinstance(e.get("event_time"), int) else 0)
    return events
