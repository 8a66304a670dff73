import pytest

from kiln_billing.service import (
    Balances,
    apply_capture,
    apply_grant,
    apply_release,
    apply_reserve,
    decide_reservation,
    settlement_for,
)
from kiln_runtime.catalog import load_catalog


def test_reserves_only_when_the_whole_price_is_available() -> None:
    assert decide_reservation(5000, 5000).reserve
    assert not decide_reservation(4999, 5000).reserve
    assert decide_reservation(0, 0).reserve  # sandbox jobs cost nothing
    with pytest.raises(ValueError):
        decide_reservation(10, -1)


def test_a_reservation_settles_once_and_never_both_ways() -> None:
    assert settlement_for("reserved", "capture") == "capture"
    assert settlement_for("reserved", "release") == "release"
    for done in ("captured", "released", "rejected"):
        assert settlement_for(done, "capture") is None  # type: ignore[arg-type]
        assert settlement_for(done, "release") is None  # type: ignore[arg-type]


def test_money_is_conserved_through_reserve_capture_release() -> None:
    b, booked = apply_grant(Balances(0, 0, 0, 0), 10_000)
    assert booked == 10_000
    b = apply_reserve(b, 5_000)
    b = apply_reserve(b, 2_000)
    b = apply_capture(b, 5_000)
    b = apply_release(b, 2_000)
    assert b == Balances(granted=10_000, available=5_000, reserved=0, captured=5_000)
    assert b.granted == b.available + b.reserved + b.captured


def test_a_revocation_never_takes_the_balance_below_zero() -> None:
    b, booked = apply_grant(Balances(3_000, 3_000, 0, 0), -5_000)
    assert booked == -3_000
    assert b.available == 0


def test_catalog_prices_are_integer_millicredits_and_sandbox_is_free() -> None:
    catalog = load_catalog()
    assert catalog.price_millicredits("kiln/prompt-to-image", {}, sandbox=False) == 5_000
    assert catalog.price_millicredits("kiln/text-to-speech", {}, sandbox=False) == 2_000
    assert catalog.price_millicredits("kiln/prompt-to-image", {}, sandbox=True) == 0
    assert catalog.pool_for("kiln/prompt-to-image", sandbox=True) == catalog.sandbox_pool
    with pytest.raises(KeyError):
        catalog.price_millicredits("kiln/nope", {}, sandbox=False)
