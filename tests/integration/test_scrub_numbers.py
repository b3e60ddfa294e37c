"""Bulk number classification answers exactly what ``numbers.py`` answers, number by number."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from dialguard.bulk_numbers import BulkNumbers
from dialguard.numbers import destination, time_zones, try_normalise

CODES = sorted(str(cc) for cc in COUNTRY_CODE_TO_REGION_CODE)


def exact(raw: str, region: str = "US") -> tuple[str | None, tuple[str, ...]]:
    e164 = try_normalise(raw, region)
    return e164, time_zones(e164, "America/New_York") if e164 else ()


@settings(max_examples=400, deadline=None, database=None)
@given(
    cc=st.sampled_from(CODES),
    national=st.text(alphabet="0123456789", min_size=2, max_size=14),
    tail=st.lists(st.text(alphabet="0123456789", min_size=1, max_size=4), max_size=4),
)
def test_numbers_sharing_a_block_get_the_exact_answer(
    cc: str, national: str, tail: list[str]
) -> None:
    bulk = BulkNumbers("US", "America/New_York")
    # Siblings: the same start with other endings, so that blocks are shared and reused.
    for ending in ["", *tail]:
        raw = f"+{cc}{national[: max(2, len(national) - len(ending))]}{ending}"
        assert bulk.classify(raw) == exact(raw), raw


def test_a_million_style_nanp_list_matches_on_a_sample() -> None:
    rng = random.Random(3)
    bulk = BulkNumbers("US", "America/New_York")
    for _ in range(3000):
        raw = f"+1{rng.randrange(200, 999)}{rng.randrange(0, 10**7):07d}"
        assert bulk.classify(raw) == exact(raw), raw


def test_other_shapes_take_the_exact_path() -> None:
    bulk = BulkNumbers("US", "America/New_York")
    for raw in ("(212) 264-1234", " +12122641234 ", "+1 212 264 1234", "", "+", "+0123", "x"):
        assert bulk.classify(raw) == exact(raw), raw


@pytest.mark.parametrize("region", ["US", "CA", "GB"])
def test_ten_digit_national_numbers_get_the_exact_answer_in_any_region(region: str) -> None:
    rng = random.Random(5)
    bulk = BulkNumbers(region, "America/New_York")
    samples = [f"{rng.randrange(0, 10**10):010d}" for _ in range(1500)]
    samples += ["2122641234", "9172640001", "8005550100", "0212264123", "1212264123"]
    for raw in samples:
        assert bulk.classify(raw) == exact(raw, region), raw
        # and what the decider's per-call parse says (one parse for number and zones)
        assert bulk.classify(raw) == (destination(raw, region, "America/New_York") or (None, ()))
