"""What ingest tells a client about an item Kafka did not acknowledge: a record refused by
Kafka is not written (retry it); one whose request timed out may have been written (unknown)."""

import asyncio
from typing import Any

from aiokafka.errors import KafkaConnectionError, RequestTimedOutError

from services.ingest.core import ACCEPTED, NOT_WRITTEN, UNKNOWN, ItemResult, _settled


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    future = asyncio.get_event_loop_policy().new_event_loop().create_future()
    future.set_exception(exc)
    return future


def test_a_timed_out_request_is_unknown_and_a_refused_one_not_written() -> None:
    sent = ItemResult(0, ACCEPTED, "e1", "crm.events.browse")
    assert _settled(sent, _failed(RequestTimedOutError())).status == UNKNOWN
    assert _settled(sent, _failed(KafkaConnectionError())).status == NOT_WRITTEN
    assert _settled(sent, None).status == NOT_WRITTEN
