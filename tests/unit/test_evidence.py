"""The sentences operators read for each rule, and when a denied destination is callable again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dialguard.policy.codes import RULE_ORDER, Rule, Verdict
from dialguard.policy.evidence import _RETRY_KEYS, _TEMPLATES, callable_at, explain
from dialguard.policy.model import Decision, Facts

T = "2026-03-10T15:00:00+00:00"

EXAMPLES: list[tuple[Rule, Facts, str]] = [
    (
        Rule.INVALID_NUMBER,
        {"destination": "12"},
        "'12' is not a valid phone number",
    ),
    (
        Rule.CALLERID_UNKNOWN,
        {"caller_id": "abc", "valid": False},
        "caller ID 'abc' is not a valid phone number",
    ),
    (
        Rule.CALLERID_UNKNOWN,
        {"caller_id": "+12125550100", "registered_for": "spring"},
        "caller ID +12125550100 is registered for campaign spring",
    ),
    (
        Rule.CALLERID_UNKNOWN,
        {"caller_id": "+12125550100", "registered": False},
        "caller ID +12125550100 is not registered",
    ),
    (
        Rule.CALLERID_RESTED,
        {"caller_id": "+12125550100", "state": "rested", "reason": "complaints", "since": T},
        f"caller ID +12125550100 is rested (complaints) since {T}",
    ),
    (
        Rule.CALLERID_RESTED,
        {"caller_id": "+12125550100", "state": "retired", "reason": None, "since": T},
        f"caller ID +12125550100 is retired (no reason) since {T}",
    ),
    (
        Rule.CAMPAIGN_PAUSED,
        {"campaign": "spring", "reason": "complaints review", "since": T},
        "campaign spring is paused (complaints review)",
    ),
    (
        Rule.CAMPAIGN_PAUSED,
        {"campaign": "spring", "reason": None},
        "campaign spring is paused (no reason)",
    ),
    (
        Rule.BLACKLISTED,
        {"match": "number", "value": "+12122641234", "scope": "global", "source": "dnc"},
        "number +12122641234 is on the global blacklist (source dnc)",
    ),
    (
        Rule.BLACKLISTED,
        {
            "match": "prefix",
            "value": "+1718264",
            "scope": "campaign",
            "source": "manual",
            "expires_at": T,
        },
        f"prefix +1718264 is on the campaign blacklist (source manual) until {T}",
    ),
    (
        Rule.CALLING_HOURS,
        {"zone": "America/New_York", "local_time": "21:00:00", "hours": "08:00-21:00"},
        "local time 21:00:00 in America/New_York is outside 08:00-21:00",
    ),
    (
        Rule.DESTINATION_COOLDOWN,
        {"answered_seconds": 60, "ended_at": T, "cooldown_s": 604800, "min_seconds": 30},
        f"a 60 s conversation ended at {T}; cooldown 7d after conversations of 30 s or more",
    ),
    (
        Rule.DESTINATION_INTERVAL,
        {"last_at": T, "interval_s": 14400},
        f"last attempt at {T}, minimum interval 4h",
    ),
    (
        Rule.DESTINATION_CAP,
        {"count": 3, "limit": 3, "window_s": 86400},
        "3 attempts in the last 24h, limit 3",
    ),
    (
        Rule.CALLERID_ROTATION,
        {"seen": 2, "limit": 2, "window_s": 30 * 86400},
        "destination already saw 2 distinct caller IDs in 30d, limit 2",
    ),
    (
        Rule.CAMPAIGN_ROTATION,
        {"used": 20, "limit": 20, "window_s": 86400},
        "campaign used 20 distinct caller IDs in 24h, limit 20",
    ),
    (
        Rule.CALLERID_RATE,
        {"count": 5, "limit": 5, "window_s": 60},
        "caller ID made 5 calls in the last 1m, limit 5",
    ),
    (
        Rule.CALLERID_CONCURRENCY,
        {"up": 10, "limit": 10},
        "caller ID has 10 calls up, limit 10",
    ),
    (
        Rule.STORE_UNAVAILABLE,
        {"deadline_ms": 500, "error": "TimeoutError"},
        "the database did not answer within 500 ms (TimeoutError)",
    ),
]


@pytest.mark.parametrize(
    ("rule", "facts", "text"),
    EXAMPLES,
    ids=[f"{r.value}-{i}" for i, (r, _, _) in enumerate(EXAMPLES)],
)
def test_each_rule_explains_its_facts_in_one_sentence(rule: Rule, facts: Facts, text: str) -> None:
    assert explain(rule, facts) == text


def test_every_rule_has_a_template_and_an_example() -> None:
    assert set(_TEMPLATES) == set(Rule)
    assert {rule for rule, _, _ in EXAMPLES} == set(Rule)


def test_an_allowed_decision_explains_that_every_rule_passed() -> None:
    assert explain(None, {}) == "every rule passed"


@pytest.mark.parametrize(
    ("rule", "facts"),
    [
        (Rule.DESTINATION_CAP, {"count": 3, "limit": 3}),  # no window_s: KeyError
        (Rule.DESTINATION_INTERVAL, {"last_at": T, "interval_s": None}),  # TypeError
        (Rule.CALLERID_RATE, {"count": 1, "limit": 1, "window_s": "a minute"}),  # ValueError
    ],
)
def test_facts_a_template_cannot_use_fall_back_to_the_rule_and_raw_facts(
    rule: Rule, facts: Facts
) -> None:
    assert explain(rule, facts) == f"{rule.value}: {facts}"


def test_rules_are_checked_in_the_documented_order() -> None:
    assert [r.value for r in RULE_ORDER] == [
        "invalid_number",
        "callerid_unknown",
        "callerid_rested",
        "campaign_paused",
        "blacklisted",
        "calling_hours",
        "destination_cooldown",
        "destination_interval",
        "destination_cap",
        "callerid_rotation",
        "campaign_rotation",
        "callerid_rate",
        "callerid_concurrency",
        "store_unavailable",
    ]


RETRY_FACT = {
    Rule.BLACKLISTED: "expires_at",
    Rule.CALLING_HOURS: "opens_at",
    Rule.DESTINATION_COOLDOWN: "frees_at",
    Rule.DESTINATION_INTERVAL: "frees_at",
    Rule.DESTINATION_CAP: "frees_at",
    Rule.CALLERID_RATE: "frees_at",
}


@pytest.mark.parametrize(("rule", "key"), RETRY_FACT.items())
def test_callable_at_reads_the_rules_retry_time_from_an_iso_string(rule: Rule, key: str) -> None:
    assert callable_at(rule, {key: "2026-03-10T19:00:00+00:00"}) == datetime(
        2026, 3, 10, 19, 0, tzinfo=UTC
    )


def test_callable_at_keys_are_the_documented_ones() -> None:
    assert dict(_RETRY_KEYS) == RETRY_FACT


def test_callable_at_accepts_a_datetime_as_it_is() -> None:
    when = datetime(2026, 3, 10, 21, 0, tzinfo=timezone(timedelta(hours=2)))
    assert callable_at(Rule.DESTINATION_INTERVAL, {"frees_at": when}) is when


def test_callable_at_keeps_the_offset_of_the_iso_string() -> None:
    value = callable_at(Rule.CALLING_HOURS, {"opens_at": "2026-03-11T08:00:00-04:00"})
    assert value is not None and value.utcoffset() == timedelta(hours=-4)
    assert value == datetime(2026, 3, 11, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rule", "facts"),
    [
        (None, {"frees_at": T}),  # allowed: nothing to wait for
        (Rule.CALLERID_ROTATION, {"frees_at": T}),  # no retry time for this rule
        (Rule.CALLERID_CONCURRENCY, {}),
        (Rule.BLACKLISTED, {"expires_at": None}),  # a permanent entry
        (Rule.DESTINATION_CAP, {}),  # the key is missing
        (Rule.DESTINATION_CAP, {"frees_at": "soon"}),  # not a time
        (Rule.DESTINATION_CAP, {"frees_at": 1773172800}),  # neither text nor datetime
    ],
)
def test_callable_at_is_none_when_the_facts_do_not_tell(rule: Rule | None, facts: Facts) -> None:
    assert callable_at(rule, facts) is None


def make_decision(rule: Rule | None, callable_when: datetime | None) -> Decision:
    return Decision(
        verdict=Verdict.DENY if rule else Verdict.ALLOW,
        rule=rule,
        evidence=explain(rule, {"last_at": T, "interval_s": 14400}),
        decision_id=7,
        caller_id="+12125550100",
        destination="+12122641234",
        campaign="default",
        at=datetime(2026, 3, 10, 15, 0, 1, tzinfo=UTC),
        callable_at=callable_when,
    )


def test_a_decision_as_json_names_verdict_rule_evidence_and_id() -> None:
    frees = datetime(2026, 3, 10, 19, 0, tzinfo=UTC)
    denied = make_decision(Rule.DESTINATION_INTERVAL, frees)
    assert not denied.allowed
    assert denied.as_json() == {
        "verdict": "deny",
        "rule": "destination_interval",
        "evidence": f"last attempt at {T}, minimum interval 4h",
        "decision_id": 7,
        "caller_id": "+12125550100",
        "destination": "+12122641234",
        "campaign": "default",
        "at": "2026-03-10T15:00:01+00:00",
        "callable_at": "2026-03-10T19:00:00+00:00",
    }


def test_an_allowed_decision_as_json_has_no_rule_and_no_callable_at() -> None:
    allowed = make_decision(None, None)
    assert allowed.allowed
    payload = allowed.as_json()
    assert payload["verdict"] == "allow"
    assert payload["rule"] is None and payload["callable_at"] is None
    assert payload["evidence"] == "every rule passed"
    assert allowed.facts == {}
