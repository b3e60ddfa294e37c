"""Numbers in bulk: exactly what :mod:`dialguard.numbers` says, worked out once per number block.

Parsing, validating and placing one number with phonenumbers costs about 0.1-0.3 ms, too slow for
lists of millions. But what phonenumbers says about a number depends only on its leading digits
and its length: its metadata are regular expressions whose tails are ``\\d{n}`` and a time-zone
map keyed by prefixes. For each (country code, national length, first three national digits) the
expressions are read once to find how many leading digits they constrain; every number sharing
those digits and that length gets the same answer, computed exactly for the first of them.

Only input already in E.164 (``+`` and digits) takes the fast path, and, where the region is in
the North American plan, a national number of ten digits (what a dialplan's ``${EXTEN}`` holds):
read in any such region it is +1 and those digits, exactly as phonenumbers reads it. And only for
blocks where the
first number came back unchanged (no national prefix stripped, no leading zeros at stake). Any
other input, and any pattern this reader does not understand, goes through ``numbers.py`` one
number at a time, so the answers never differ.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any

from phonenumbers import PhoneMetadata, country_code_for_region
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE
from phonenumbers.tzdata import TIMEZONE_DATA

from dialguard.numbers import destination

# The standard library's regular expression parser: private, but stable since Python 3.11.
_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")

Verdict = tuple[str | None, tuple[str, ...]]
"""(E.164 form or None when invalid, the time zones it may ring in)."""

_DIGITS = frozenset("0123456789")
_COUNTRY_CODES = frozenset(str(cc) for cc in COUNTRY_CODE_TO_REGION_CODE)
_DESCS = (
    "general_desc",
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)
_FIXED = 3  # national digits every analysis is made for
_MAX_BLOCKS = 500_000


class _Unsupported(Exception):
    """A construct the block analysis does not model: such numbers are parsed one by one."""


class BulkNumbers:
    """Classifies raw numbers like ``numbers.try_normalise`` + ``numbers.time_zones``.

    Holds a cache of number blocks, bounded to ``_MAX_BLOCKS`` entries; not thread-safe.
    """

    def __init__(self, region: str, fallback_zone: str) -> None:
        self._region = region
        self._fallback = fallback_zone
        self._nanp = country_code_for_region(region) == 1
        # (digits, first 6 digits) -> how many leading digits decide, or None: parse each number.
        self._plans: dict[tuple[int, str], int | None] = {}
        # (digits, deciding digits) -> the block's verdict, or None: parse each number.
        self._blocks: dict[tuple[int, str], Verdict | None] = {}

    def classify(self, raw: str) -> Verdict:
        text = raw if raw[:1] == "+" else raw.strip()
        if self._nanp and _is_nanp_national(text):
            text = "+1" + text
        digits = text[1:]
        size = len(digits)
        if text[:1] == "+" and 2 <= size <= 17 and digits.isdigit() and digits.isascii():
            plan = self._plans.get((size, digits[:6]), _UNSEEN)
            if plan == _UNSEEN:
                plan = self._plans[(size, digits[:6])] = _plan(digits)
            if plan is not None:
                key = (size, digits[:plan])
                verdict = self._blocks.get(key, _UNKNOWN)
                if verdict is _UNKNOWN:
                    if len(self._blocks) >= _MAX_BLOCKS:
                        self._blocks.clear()
                    verdict = self._blocks[key] = self._learn(text, digits, plan)
                if verdict is not None:
                    return verdict if verdict[0] is None else (text, verdict[1])
        return self._exact(raw)

    def _learn(self, text: str, digits: str, plan: int) -> Verdict | None:
        """The block's verdict from its first number, or None when the block must be parsed."""
        cc = _country_code(digits)
        assert cc is not None  # a plan exists only for a known country code
        nsn = digits[len(cc) :]
        if nsn[:1] == "0" and digits[len(cc) : plan].strip("0") == "":
            return None  # how many leading zeros phonenumbers keeps depends on later digits
        if _strips_national_prefix(cc, nsn):
            return None
        e164, zones = self._exact(text)
        if e164 is not None and e164 != text:
            return None
        return (e164, zones)

    def _exact(self, raw: str) -> Verdict:
        found = destination(raw, self._region, self._fallback)
        return found if found is not None else (None, ())


def _is_nanp_national(text: str) -> bool:
    """Ten digits starting with an area code (which never starts with 0 or 1)."""
    return len(text) == 10 and text.isdigit() and text.isascii() and text[0] not in "01"


_UNSEEN = -1
_UNKNOWN: Verdict = ("", ())


def _country_code(digits: str) -> str | None:
    """The country code as phonenumbers reads it after a +: the first 1 to 3 digits it knows."""
    for size in (1, 2, 3):
        if digits[:size] in _COUNTRY_CODES:
            return digits[:size]
    return None


def _plan(digits: str) -> int | None:
    """How many leading digits (country code included) decide the answer for numbers that start
    like ``digits`` and are as long; None when they must be parsed one by one."""
    cc = _country_code(digits)
    if cc is None or digits[:1] == "0":
        return None
    nsn = digits[len(cc) :]
    width = decisive_digits(cc, len(nsn), nsn[:_FIXED])
    return None if width is None else len(cc) + width


def _strips_national_prefix(cc: str, nsn: str) -> bool:
    for metadata in _metadata(cc):
        pattern = metadata.national_prefix_for_parsing
        if pattern and re.match(pattern, nsn):
            return True
    return False


@cache
def _metadata(cc: str) -> tuple[Any, ...]:
    code = int(cc)
    found = (
        PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        for region in COUNTRY_CODE_TO_REGION_CODE[code]
    )
    return tuple(m for m in found if m is not None)


@lru_cache(maxsize=65536)
def decisive_digits(cc: str, length: int, fixed: str) -> int | None:
    """How many leading national digits decide every answer for numbers of ``length`` national
    digits that start with ``fixed``; None when the metadata use constructs not modelled here.

    A pattern constrains a position when some way of matching it puts a class narrower than
    ``\\d`` there. Numbers that agree up to the last constrained position of every way of matching
    that is open to them match the same patterns.
    """
    width = len(fixed)
    try:
        for metadata in _metadata(cc):
            for name in _DESCS:
                desc = getattr(metadata, name)
                if desc is not None and desc.national_number_pattern:
                    width = max(width, _constrained(desc.national_number_pattern, length, fixed))
            for pattern in (metadata.leading_digits, metadata.national_prefix_for_parsing):
                if pattern:
                    width = max(width, _constrained(pattern, length, fixed, prefix=True))
    except _Unsupported:
        return None
    return max(width, _zone_digits(cc, fixed))


def _zone_digits(cc: str, fixed: str) -> int:
    """National digits the time-zone map may read: its longest key that agrees with ``fixed``."""
    head = cc + fixed
    longest = max(
        (len(k) for k in _zone_keys(cc) if k.startswith(head) or head.startswith(k)), default=0
    )
    return max(0, longest - len(cc))


@cache
def _zone_keys(cc: str) -> tuple[str, ...]:
    return tuple(k for k in TIMEZONE_DATA if k.startswith(cc))


# -- the pattern reader ---------------------------------------------------------------------------

Node = tuple[str, Any]
State = tuple[int, int]  # (digits consumed, last constrained position)


def _constrained(pattern: str, length: int, fixed: str, *, prefix: bool = False) -> int:
    """The last position a pattern constrains over strings of ``length`` starting with ``fixed``
    (for a prefix pattern, ``re.match``, over its matches of any length up to ``length``)."""
    states = _walk(_compiled(pattern), {(0, 0)}, length, fixed)
    ends = (last for pos, last in states if pos == length or (prefix and pos <= length))
    return max(ends, default=0)


@cache
def _compiled(pattern: str) -> tuple[Node, ...]:
    return tuple(_nodes(_parser.parse(pattern)))


def _nodes(seq: Any) -> Iterator[Node]:
    c = _constants
    for op, av in seq:
        if op in (c.LITERAL, c.IN, c.NOT_LITERAL):
            yield ("class", _char_class(op, av))
        elif op is c.SUBPATTERN:
            yield ("seq", tuple(_nodes(av[-1])))
        elif op is c.BRANCH:
            yield ("branch", tuple(tuple(_nodes(alt)) for alt in av[1]))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            low, high, sub = av
            yield ("repeat", (low, None if high is c.MAXREPEAT else high, tuple(_nodes(sub))))
        elif op is c.AT and av in (c.AT_BEGINNING, c.AT_BEGINNING_STRING):
            continue
        elif op is c.AT and av in (c.AT_END, c.AT_END_STRING):
            yield ("end", None)
        else:
            raise _Unsupported(str(op))


def _char_class(op: Any, av: Any) -> frozenset[str]:
    c = _constants
    if op is c.LITERAL:
        return frozenset({chr(av)}) & _DIGITS
    if op is c.NOT_LITERAL:
        return _DIGITS - {chr(av)}
    chars: set[str] = set()
    negate = False
    for kind, value in av:
        if kind is c.NEGATE:
            negate = True
        elif kind is c.LITERAL:
            chars.add(chr(value))
        elif kind is c.RANGE:
            chars.update(chr(x) for x in range(value[0], value[1] + 1))
        elif kind is c.CATEGORY and value is c.CATEGORY_DIGIT:
            chars.update(_DIGITS)
        else:
            raise _Unsupported(str(kind))
    chars &= _DIGITS
    return frozenset(_DIGITS - chars if negate else chars)


def _walk(nodes: tuple[Node, ...], states: set[State], cap: int, fixed: str) -> set[State]:
    for kind, value in nodes:
        if not states:
            break
        if kind == "class":
            full = value == _DIGITS
            states = {
                (pos + 1, last if full else pos + 1)
                for pos, last in states
                if pos < cap and (pos >= len(fixed) or fixed[pos] in value)
            }
        elif kind == "end":
            states = {(pos, last) for pos, last in states if pos == cap}
        elif kind == "seq":
            states = _walk(value, states, cap, fixed)
        elif kind == "branch":
            states = set().union(*(_walk(alt, states, cap, fixed) for alt in value))
        else:
            low, high, sub = value
            out: set[State] = set()
            current = states
            for count in range(cap + 1 if high is None else high + 1):
                if count >= low:
                    out |= current
                if not current or (high is not None and count == high):
                    break
                current = _walk(sub, current, cap, fixed)
            states = out
    return states
