"""The ids every engine takes alike (services/common/constants.py): what the Redis keys and their
hash tags can hold."""

from __future__ import annotations

import pytest

from services.common import keys
from services.common.constants import MAX_ID_CHARS, checked_customer, checked_tenant


@pytest.mark.parametrize("tenant", ["", "a:b", "}shop", "{", "a{b}", "x" * (MAX_ID_CHARS + 1), "a\nb"])
def test_a_tenant_no_key_or_hash_tag_can_hold_is_refused(tenant: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        checked_tenant(tenant)


@pytest.mark.parametrize("tenant", ["shop", "a|b", "a b", "店铺", "x" * MAX_ID_CHARS])
def test_every_other_tenant_leads_a_hash_tag_of_its_own(tenant: str) -> None:
    assert checked_tenant(tenant) == tenant
    key = keys.customer_key(tenant, 7, "c}1")
    tag = key[key.index("{") + 1 : key.index("}")]
    assert tag == f"{tenant}:7"  # the whole tag, never cut short or empty


@pytest.mark.parametrize("customer", ["", "x" * (MAX_ID_CHARS + 1), "c\x00"])
def test_a_customer_id_every_engine_refuses(customer: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        checked_customer(customer)


def test_ids_with_braces_and_colons_are_customers() -> None:
    assert checked_customer("}:{") == "}:{"
