"""Profiles: building from raw values, every problem reported, shipped profiles, CLI overrides."""

from __future__ import annotations

from typing import Any

import pytest

from dialguard.policy.profile import (
    BUILTIN_CHANGES,
    DEFAULT_VALUES,
    PROFILE_KEYS,
    Profile,
    ProfileError,
    build_profile,
    builtin_profiles,
    builtin_raw,
    parse_override_assignment,
    with_changes,
)
from dialguard.policy.values import Hours, ValueSyntaxError, Window


def build(**overrides: Any) -> Profile:
    return build_profile(DEFAULT_VALUES, overrides, where="profiles.test")


def problems_of(**overrides: Any) -> list[str]:
    with pytest.raises(ProfileError) as caught:
        build(**overrides)
    return caught.value.problems


def test_the_default_profile_has_the_documented_values() -> None:
    profile = build()
    assert profile == Profile(
        calling_hours=Hours(8 * 3600, 21 * 3600),
        destination_min_interval=4 * 3600,
        destination_caps=(Window(3, 86400), Window(7, 7 * 86400)),
        conversation_min_seconds=30,
        conversation_cooldown=7 * 86400,
        rotation_per_destination=Window(2, 30 * 86400),
        campaign_callerids_per_day=20,
        callerid_caps=(Window(5, 60), Window(60, 3600), Window(300, 86400)),
        callerid_max_concurrent=10,
        require_registered_callerid=True,
        max_call_duration=2 * 3600,
    )


def test_every_profile_key_has_a_default() -> None:
    assert set(DEFAULT_VALUES) == set(PROFILE_KEYS)


def test_every_rule_can_be_switched_off() -> None:
    profile = build(
        calling_hours="off",
        destination_min_interval="off",
        destination_caps=[],
        conversation_min_seconds="off",
        conversation_cooldown="off",
        rotation_per_destination="off",
        campaign_callerids_per_day="off",
        callerid_caps="[]",
        callerid_max_concurrent="off",
        require_registered_callerid=False,
    )
    assert profile.calling_hours is None
    assert profile.destination_min_interval is None
    assert profile.destination_caps == ()
    assert profile.conversation_min_seconds is None
    assert profile.conversation_cooldown is None
    assert profile.rotation_per_destination is None
    assert profile.campaign_callerids_per_day is None
    assert profile.callerid_caps == ()
    assert profile.callerid_max_concurrent is None
    assert profile.require_registered_callerid is False


def test_values_in_cli_string_form_parse_like_the_file_form() -> None:
    profile = build(
        destination_caps="2/24h,5/7d",
        conversation_min_seconds="45",
        campaign_callerids_per_day="12",
        callerid_max_concurrent="3",
        require_registered_callerid="false",
        max_call_duration="90m",
    )
    assert profile.destination_caps == (Window(2, 86400), Window(5, 7 * 86400))
    assert profile.conversation_min_seconds == 45
    assert profile.campaign_callerids_per_day == 12
    assert profile.callerid_max_concurrent == 3
    assert profile.require_registered_callerid is False
    assert profile.max_call_duration == 5400


def test_every_invalid_value_is_reported_one_line_each() -> None:
    problems = problems_of(
        calling_hours="21:00-08:00",
        destination_min_interval="4 hours",
        destination_caps=["3/24h", "seven"],
        conversation_min_seconds="30s",
        conversation_cooldown="0d",
        rotation_per_destination="[]",
        campaign_callerids_per_day=True,
        callerid_caps="5/1m,0/1h",
        callerid_max_concurrent=-1,
        require_registered_callerid="maybe",
        max_call_duration="off",
    )
    assert len(problems) == len(PROFILE_KEYS)
    for key, problem in zip(PROFILE_KEYS, problems, strict=True):
        assert problem.startswith(f"profiles.test.{key}: "), problem
        assert "\n" not in problem


def test_a_profile_error_message_joins_its_problems() -> None:
    with pytest.raises(ProfileError) as caught:
        build(calling_hours="x", destination_min_interval="y")
    assert str(caught.value) == "; ".join(caught.value.problems)
    assert isinstance(caught.value, ValueError)


def test_unknown_keys_are_reported_with_the_known_ones() -> None:
    problems = problems_of(destination_cap="3/24h", colour="blue")
    assert problems[0].startswith("profiles.test: unknown key 'destination_cap' (known: ")
    assert problems[1].startswith("profiles.test: unknown key 'colour' (known: ")
    assert all(", ".join(PROFILE_KEYS) in p for p in problems)


def test_unknown_keys_and_invalid_values_are_reported_together() -> None:
    problems = problems_of(colour="blue", calling_hours="all day")
    assert len(problems) == 2
    assert "unknown key 'colour'" in problems[0]
    assert problems[1].startswith("profiles.test.calling_hours: expected calling hours")


def test_a_key_missing_from_the_base_is_reported() -> None:
    base = {k: v for k, v in DEFAULT_VALUES.items() if k != "max_call_duration"}
    with pytest.raises(ProfileError) as caught:
        build_profile(base, {}, where="campaign spring")
    assert caught.value.problems == ["campaign spring.max_call_duration: missing"]


def test_overrides_win_over_the_base() -> None:
    base = builtin_raw("b2b")
    profile = build_profile(base, {"calling_hours": "10:00-16:00"}, where="campaign x")
    assert profile.calling_hours == Hours(10 * 3600, 16 * 3600)
    assert profile.destination_caps == (Window(2, 86400), Window(5, 7 * 86400))


def test_the_shipped_profiles_differ_from_default_as_documented() -> None:
    profiles = builtin_profiles()
    assert set(profiles) == {"default", "b2c", "b2b", "finance"} == set(BUILTIN_CHANGES)
    default = profiles["default"]
    assert profiles["b2c"] == with_changes(default, calling_hours=Hours(9 * 3600, 20 * 3600))
    assert profiles["b2b"] == with_changes(
        default,
        calling_hours=Hours(9 * 3600, 18 * 3600),
        destination_caps=(Window(2, 86400), Window(5, 7 * 86400)),
    )
    assert profiles["finance"] == with_changes(
        default,
        destination_min_interval=86400,
        destination_caps=(Window(1, 86400), Window(7, 7 * 86400)),
        conversation_cooldown=7 * 86400,
    )


def test_an_unshipped_profile_name_starts_from_the_default_values() -> None:
    assert builtin_raw("custom") == dict(DEFAULT_VALUES)
    assert builtin_raw("b2b")["calling_hours"] == "09:00-18:00"


def test_builtin_raw_returns_a_copy_that_callers_may_change() -> None:
    raw = builtin_raw("default")
    raw["calling_hours"] = "off"
    assert DEFAULT_VALUES["calling_hours"] == "08:00-21:00"
    assert builtin_raw("default")["calling_hours"] == "08:00-21:00"


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("destination_caps=3/24h,7/7d", ("destination_caps", "3/24h,7/7d")),
        (" calling_hours = 09:00-17:00 ", ("calling_hours", "09:00-17:00")),
        ("callerid_caps=", ("callerid_caps", "")),
        ("reason=a=b", ("reason", "a=b")),
    ],
)
def test_a_set_assignment_is_key_equals_value(text: str, pair: tuple[str, str]) -> None:
    assert parse_override_assignment(text) == pair


@pytest.mark.parametrize("text", ["destination_caps", "=3/24h", " =x", ""])
def test_a_set_assignment_without_a_key_or_equals_sign_is_refused(text: str) -> None:
    with pytest.raises(ValueSyntaxError, match="expected key=value"):
        parse_override_assignment(text)


def test_a_comma_list_from_set_overrides_both_caps() -> None:
    key, value = parse_override_assignment("destination_caps=3/24h,7/7d")
    profile = build_profile(builtin_raw("b2b"), {key: value}, where="campaign spring")
    assert profile.destination_caps == (Window(3, 86400), Window(7, 7 * 86400))


def test_an_empty_list_from_set_switches_the_caps_off() -> None:
    key, value = parse_override_assignment("callerid_caps=")
    assert build(**{key: value}).callerid_caps == ()


def test_a_profile_is_immutable_and_changed_by_copy() -> None:
    profile = build()
    changed = with_changes(profile, callerid_max_concurrent=2)
    assert changed.callerid_max_concurrent == 2
    assert profile.callerid_max_concurrent == 10
    with pytest.raises(AttributeError):
        profile.callerid_max_concurrent = 3  # type: ignore[misc]
