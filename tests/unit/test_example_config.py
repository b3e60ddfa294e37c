"""The example configuration shipped in docs/ loads and states the built-in defaults."""

from __future__ import annotations

from pathlib import Path

from dialguard.config import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "dialguard.example.toml"


def test_the_example_configuration_loads_and_matches_the_defaults() -> None:
    example = load_settings(EXAMPLE, {})
    defaults = load_settings(None, {})
    assert example.profiles == defaults.profiles
    assert example.feedback == defaults.feedback
    assert example.gate == defaults.gate
    assert example.numbers == defaults.numbers
