"""Billing's decisions, as pure functions of the current balance and reservation."""

from dataclasses import dataclass
from typing import Literal

ReservationStatus = Literal["reserved", "captured", "released", "rejected"]
Settlement = Literal["capture", "release"]


@dataclass(frozen=True)
class Balances:
    granted: int
    available: int
    reserved: int
    captured: int


@dataclass(frozen=True)
class ReserveDecision:
    reserve: bool
    amount: int


def decide_reservation(available: int, price: int) -> ReserveDecision:
    """Reserve the full price or nothing; a balance never goes below zero."""
    if price < 0:
        raise ValueError("price must not be negative")
    return ReserveDecision(reserve=price <= available, amount=price)


def settlement_for(status: ReservationStatus, outcome: Settlement) -> Settlement | None:
    """What a terminal job event does to a reservation: only a held one moves, once."""
    return outcome if status == "reserved" else None


def apply_grant(b: Balances, amount: int) -> tuple[Balances, int]:
    """Book a grant; a revocation (negative) takes at most what is available.
    Returns the new balances and the amount actually booked."""
    booked = max(amount, -b.available)
    return (
        Balances(b.granted + booked, b.available + booked, b.reserved, b.captured),
        booked,
    )


def apply_reserve(b: Balances, amount: int) -> Balances:
    return Balances(b.granted, b.available - amount, b.reserved + amount, b.captured)


def apply_capture(b: Balances, amount: int) -> Balances:
    return Balances(b.granted, b.available, b.reserved - amount, b.captured + amount)


def apply_release(b: Balances, amount: int) -> Balances:
    return Balances(b.granted, b.available + amount, b.reserved - amount, b.captured)
