"""Phone numbers: E.164 normalisation, list normalisation, prefixes and time zones."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType

from dialguard.numbers import (
    InvalidNumber,
    is_e164_prefix,
    is_valid_region,
    normalise,
    normalise_for_list,
    time_zones,
    try_normalise,
)


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("(212) 264-1234", "US", "+12122641234"),
        ("+1 212 264 1234", "US", "+12122641234"),
        ("212.264.1234", "US", "+12122641234"),
        ("1-212-264-1234", "US", "+12122641234"),
        (" +12122641234 ", "US", "+12122641234"),
        ("+1 212 264 1234", "GB", "+12122641234"),
        ("020 7946 0018", "GB", "+442079460018"),
        ("+44 20 7946 0018", "GB", "+442079460018"),
        ("+44 (0)20 7946 0018", "US", "+442079460018"),
        ("07400 123456", "GB", "+447400123456"),
        ("0800 123 4567", "GB", "+448001234567"),
        ("+61 412 345 678", "US", "+61412345678"),
    ],
)
def test_formats_of_one_number_normalise_to_one_e164(raw: str, region: str, e164: str) -> None:
    assert normalise(raw, region) == e164
    assert try_normalise(raw, region) == e164


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("", "US"),
        ("   ", "US"),
        ("not a number", "US"),
        ("12", "US"),
        ("555-0100", "US"),  # too short for a US number
        ("+1212264123412345", "US"),  # too long
        ("1" * 70, "US"),  # far too long to even parse
        ("020 7946 0018", "US"),  # a UK national number read as American
        ("(212) 264-1234", "GB"),  # an American national number read as British
        ("+1 000 264 1234", "US"),  # no such area code
    ],
)
def test_garbage_empty_and_too_long_are_invalid_numbers(raw: str, region: str) -> None:
    with pytest.raises(InvalidNumber, match="not a valid phone number"):
        normalise(raw, region)
    assert try_normalise(raw, region) is None


def test_invalid_number_is_a_value_error() -> None:
    assert issubclass(InvalidNumber, ValueError)


def test_list_normalisation_takes_e164_input_on_its_shape() -> None:
    assert normalise_for_list("+1 212-264-1234", "US") == "+12122641234"
    assert normalise_for_list("+1 (212) 264.1234", "GB") == "+12122641234"
    # A listed number no destination can equal blocks nothing, so it is not parsed.
    assert normalise_for_list("+19999999999", "US") == "+19999999999"


def test_list_normalisation_parses_national_input_in_the_region() -> None:
    assert normalise_for_list("(212) 264-1234", "US") == "+12122641234"
    assert normalise_for_list(" 020 7946 0018 ", "GB") == "+442079460018"


@pytest.mark.parametrize("raw", ["+0212264123", "+12", "+1234567890123456", "garbage", ""])
def test_list_normalisation_refuses_what_is_neither_e164_nor_a_valid_number(raw: str) -> None:
    with pytest.raises(InvalidNumber):
        normalise_for_list(raw, "US")


@pytest.mark.parametrize("prefix", ["+1", "+1718264", "+44", "+123456789012345"])
def test_a_blacklist_prefix_is_plus_and_up_to_15_digits(prefix: str) -> None:
    assert is_e164_prefix(prefix)


@pytest.mark.parametrize("text", ["1718264", "+", "+0", "+01718", "+1 718", "+1234567890123456"])
def test_anything_else_is_not_a_prefix(text: str) -> None:
    assert not is_e164_prefix(text)


def test_regions_are_iso_codes_phonenumbers_knows() -> None:
    assert is_valid_region("US") and is_valid_region("GB")
    assert not is_valid_region("UK") and not is_valid_region("us")


def test_a_geographic_number_rings_in_its_areas_zone() -> None:
    assert time_zones("+12122641234", "Europe/Paris") == ("America/New_York",)
    assert time_zones("+13105550123", "Europe/Paris") == ("America/Los_Angeles",)
    assert time_zones("+442079460018", "America/New_York") == ("Europe/London",)


def test_a_mobile_number_may_ring_in_several_zones() -> None:
    zones = time_zones("+61412345678", "Europe/Paris")
    assert {"Australia/Perth", "Australia/Sydney"} <= set(zones)
    assert "Europe/Paris" not in zones


@pytest.mark.parametrize(
    ("e164", "kind"),
    [
        ("+18002752273", PhoneNumberType.TOLL_FREE),
        ("+19002345678", PhoneNumberType.PREMIUM_RATE),
        ("+448001234567", PhoneNumberType.TOLL_FREE),
        ("+449012345678", PhoneNumberType.PREMIUM_RATE),
    ],
)
def test_toll_free_and_premium_numbers_use_the_fallback_zone(e164: str, kind: int) -> None:
    assert phonenumbers.number_type(phonenumbers.parse(e164)) == kind
    assert time_zones(e164, "Europe/Paris") == ("Europe/Paris",)
    assert time_zones(e164, "Asia/Tokyo") == ("Asia/Tokyo",)


def test_a_number_whose_zone_is_unknown_uses_the_fallback_zone() -> None:
    # Inmarsat (+870) is valid but has no geography phonenumbers can name.
    e164 = normalise("+870 773 111 632", "US")
    assert time_zones(e164, "Europe/Paris") == ("Europe/Paris",)


# Numbers built from each region's example numbers with random subscriber digits: most are
# valid, and the property is checked on the ones that are.
REGIONS = ["US", "GB", "DE", "FR", "AU", "JP", "IN", "BR", "ZA", "CA"]
TYPES = [PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE]


@st.composite
def national_texts(draw: st.DrawFn) -> tuple[str, str]:
    region = draw(st.sampled_from(REGIONS))
    kind = draw(st.sampled_from(TYPES))
    example = phonenumbers.example_number_for_type(region, kind)
    assert example is not None
    digits = str(example.national_number)
    tail = draw(st.text(alphabet="0123456789", min_size=4, max_size=4))
    national = digits[:-4] + tail
    fmt = draw(st.sampled_from(["national", "international", "spaced", "raw"]))
    number = phonenumbers.parse(national, region)
    if fmt == "national":
        text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    elif fmt == "international":
        text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    elif fmt == "spaced":
        text = " ".join(national[i : i + 3] for i in range(0, len(national), 3))
    else:
        text = national
    return text, region


@given(national_texts(), st.sampled_from(REGIONS))
def test_normalise_is_idempotent_on_its_own_output(
    case: tuple[str, str], other_region: str
) -> None:
    text, region = case
    e164 = try_normalise(text, region)
    if e164 is None:
        return
    assert normalise(e164, region) == e164
    # E.164 carries its country, so the region it is read in no longer matters.
    assert normalise(e164, other_region) == e164
    assert normalise_for_list(e164, other_region) == e164


@given(st.text(max_size=24))
def test_arbitrary_text_either_normalises_or_is_an_invalid_number(text: str) -> None:
    e164 = try_normalise(text, "US")
    if e164 is not None:
        assert e164.startswith("+") and e164[1:].isdigit()
        assert normalise(e164, "US") == e164
