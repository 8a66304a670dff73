"""Credits at the API edge are decimal strings; inside Kiln they are integer millicredits."""

from decimal import Decimal, InvalidOperation

MILLICREDITS_PER_CREDIT = 1000


class InvalidAmount(ValueError):
    pass


def parse_credits(text: str) -> int:
    """'12.5' -> 12500. Refuses floats' cousins: exponents, NaN, more than 3 decimals."""
    cleaned = text.strip()
    if not cleaned or any(c not in "0123456789.-+" for c in cleaned):
        raise InvalidAmount(f"not a decimal number of credits: {text!r}")
    try:
        value = Decimal(cleaned)
    except InvalidOperation as exc:
        raise InvalidAmount(f"not a decimal number of credits: {text!r}") from exc
    millis = value * MILLICREDITS_PER_CREDIT
    if millis != millis.to_integral_value():
        raise InvalidAmount("credits have at most 3 decimal places")
    return int(millis)


def format_credits(millicredits: int) -> str:
    """12500 -> '12.5', 2000 -> '2', -500 -> '-0.5'."""
    sign = "-" if millicredits < 0 else ""
    whole, frac = divmod(abs(millicredits), MILLICREDITS_PER_CREDIT)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:03d}".rstrip("0")
