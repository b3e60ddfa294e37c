"""Phone numbers: E.164 normalisation, validity and the time zones a number may ring in.

Everything here is pure and cheap enough for the per-call path; the phonenumbers metadata is
loaded once by the library.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumberType, timezone

_NON_GEOGRAPHIC = frozenset(
    {
        PhoneNumberType.TOLL_FREE,
        PhoneNumberType.PREMIUM_RATE,
        PhoneNumberType.SHARED_COST,
        PhoneNumberType.PERSONAL_NUMBER,
        PhoneNumberType.UAN,
        PhoneNumberType.VOIP,
        PhoneNumberType.VOICEMAIL,
        PhoneNumberType.PAGER,
    }
)
_UNKNOWN_ZONE = "Etc/Unknown"
_E164_SHAPE = re.compile(r"\+[1-9]\d{6,14}")
_SEPARATORS = re.compile(r"[\s\-().]")


class InvalidNumber(ValueError):
    """The text is not a valid phone number for the region it is read in."""


def normalise(raw: str, region: str) -> str:
    """Return the E.164 form of ``raw`` read in ``region``, or raise :class:`InvalidNumber`."""
    parsed = _parse(raw, region)
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber(f"not a valid phone number: {raw!r}")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def try_normalise(raw: str, region: str) -> str | None:
    """Like :func:`normalise`, but ``None`` for an invalid number."""
    try:
        return normalise(raw, region)
    except InvalidNumber:
        return None


@lru_cache(maxsize=4096)
def cached_normalise(raw: str, region: str) -> str | None:
    """:func:`try_normalise` for the few values seen again and again (caller IDs)."""
    return try_normalise(raw, region)


def destination(raw: str, region: str, fallback_zone: str) -> tuple[str, tuple[str, ...]] | None:
    """The E.164 form of a destination and its time zones, from a single parse; ``None`` when
    invalid. The per-call path parses each destination once."""
    parsed = _parse(raw, region)
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        return None
    e164 = str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    return e164, _zones_of(parsed, fallback_zone)


def normalise_for_list(raw: str, region: str) -> str:
    """Normalise a number for a bulk list (blacklist imports), fast for E.164 input.

    National registries hold hundreds of millions of rows, so a value already written in E.164
    (``+`` and 7 to 15 digits, separators allowed) is taken on its shape alone; listing a number
    that no valid destination can equal blocks nothing. Anything else is fully parsed.
    """
    text = raw.strip()
    if text.startswith("+"):
        compact = _SEPARATORS.sub("", text)
        if _E164_SHAPE.fullmatch(compact):
            return compact
    return normalise(text, region)


def is_e164_prefix(text: str) -> bool:
    """A blacklist prefix: ``+`` followed by 1 to 15 digits, no leading zero."""
    return re.fullmatch(r"\+[1-9]\d{0,14}", text) is not None


def _parse(raw: str, region: str) -> phonenumbers.PhoneNumber | None:
    text = raw.strip()
    if not text or len(text) > 64:
        return None
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


@lru_cache(maxsize=65536)
def time_zones(e164: str, fallback: str) -> tuple[str, ...]:
    """Every IANA zone ``e164`` may ring in; ``(fallback,)`` for numbers with no area.

    Toll-free, premium, shared-cost, personal, UAN, VoIP numbers and numbers whose zone is unknown
    have no geography of their own, so they are judged in the operator's fallback zone.
    """
    return _zones_of(phonenumbers.parse(e164, None), fallback)


def _zones_of(parsed: phonenumbers.PhoneNumber, fallback: str) -> tuple[str, ...]:
    if phonenumbers.number_type(parsed) in _NON_GEOGRAPHIC:
        return (fallback,)
    zones = tuple(z for z in timezone.time_zones_for_number(parsed) if z != _UNKNOWN_ZONE)
    return zones or (fallback,)


def is_valid_region(region: str) -> bool:
    return region in phonenumbers.SUPPORTED_REGIONS
