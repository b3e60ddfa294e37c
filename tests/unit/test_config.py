"""Configuration: the file, DIALGUARD_* variables over it, every problem reported at once."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dialguard.config import (
    _SCHEMA,
    ConfigError,
    Settings,
    default_data_dir,
    find_config_file,
    load_settings,
    profile_raw,
)
from dialguard.policy.profile import builtin_profiles, builtin_raw
from dialguard.policy.values import Hours, Window

Getter = Callable[[Settings], Any]

# For every key: a valid value unlike the default, the parsed value, and where it lands.
EVERY_KEY: dict[tuple[str, str], tuple[str, Any, Getter]] = {
    ("database", "url"): (
        "postgresql://dg@db/dialguard",
        "postgresql://dg@db/dialguard",
        lambda s: s.database.url,
    ),
    ("database", "data_dir"): (
        "/srv/dialguard",
        Path("/srv/dialguard"),
        lambda s: s.database.data_dir,
    ),
    ("database", "pool_size"): ("7", 7, lambda s: s.database.pool_size),
    ("database", "decision_batches"): ("0", 0, lambda s: s.database.decision_batches),
    ("database", "retention"): ("90d", 90 * 86400, lambda s: s.database.retention),
    ("database", "clock_tolerance"): ("2s", 2.0, lambda s: s.database.clock_tolerance),
    ("ari", "url"): ("https://pbx:8089/ari/", "https://pbx:8089/ari", lambda s: s.ari.url),
    ("ari", "username"): ("gatekeeper", "gatekeeper", lambda s: s.ari.username),
    ("ari", "password"): ("s3cret", "s3cret", lambda s: s.ari.password),
    ("ari", "app"): ("gate", "gate", lambda s: s.ari.app),
    ("ari", "trunks"): ("PJSIP/a, PJSIP/b", ("PJSIP/a", "PJSIP/b"), lambda s: s.ari.trunks),
    ("ari", "subscribe_all"): ("true", True, lambda s: s.ari.subscribe_all),
    ("gate", "fail_mode"): ("open", "open", lambda s: s.gate.fail_mode),
    ("gate", "decision_deadline"): ("2s", 2.0, lambda s: s.gate.decision_deadline),
    ("gate", "deny_cause"): ("17", 17, lambda s: s.gate.deny_cause),
    ("gate", "deny_label"): ("denied", "denied", lambda s: s.gate.deny_label),
    ("gate", "allow_label"): ("go", "go", lambda s: s.gate.allow_label),
    ("gate", "campaign_from"): ("var:CAMPAIGN", "var:CAMPAIGN", lambda s: s.gate.campaign_from),
    ("gate", "destination_from"): ("arg:2", "arg:2", lambda s: s.gate.destination_from),
    ("gate", "enforce_gate"): ("yes", True, lambda s: s.gate.enforce_gate),
    ("gate", "spool_dir"): ("/var/spool/dg", Path("/var/spool/dg"), lambda s: s.gate.spool_dir),
    ("gate", "mode"): ("broadcast", "broadcast", lambda s: s.gate.mode),
    ("gate", "instance_id"): ("pbx1-a", "pbx1-a", lambda s: s.gate.instance_id),
    ("api", "listen"): ("127.0.0.1:9000", ("127.0.0.1", 9000), lambda s: s.api.listen),
    ("api", "token"): ("t0ken", "t0ken", lambda s: s.api.token),
    ("api", "max_body"): ("2048", 2048, lambda s: s.api.max_body),
    ("metrics", "listen"): ("0.0.0.0:9200", ("0.0.0.0", 9200), lambda s: s.metrics.listen),
    ("metrics", "per_callerid"): ("true", True, lambda s: s.metrics.per_callerid),
    ("proxy", "listen"): ("[::1]:8091", ("::1", 8091), lambda s: s.proxy.listen),
    ("proxy", "username"): ("dialer", "dialer", lambda s: s.proxy.username),
    ("proxy", "password"): ("pw", "pw", lambda s: s.proxy.password),
    ("proxy", "trunk_patterns"): (
        r"^SIP/(?P<destination>\d+)$",
        (r"^SIP/(?P<destination>\d+)$",),
        lambda s: s.proxy.trunk_patterns,
    ),
    ("proxy", "campaign_variable"): ("CAMP", "CAMP", lambda s: s.proxy.campaign_variable),
    ("feedback", "complaints_to_rest"): ("5", 5, lambda s: s.feedback.complaints_to_rest),
    ("feedback", "complaints_window"): ("12h", 43200, lambda s: s.feedback.complaints_window_s),
    ("feedback", "complaint_rate_to_rest"): (
        "0.01",
        0.01,
        lambda s: s.feedback.complaint_rate_to_rest,
    ),
    ("feedback", "complaint_rate_calls"): ("500", 500, lambda s: s.feedback.complaint_rate_calls),
    ("feedback", "complaint_rate_min_calls"): (
        "100",
        100,
        lambda s: s.feedback.complaint_rate_min_calls,
    ),
    ("feedback", "campaign_complaint_rate_to_pause"): (
        "0.02",
        0.02,
        lambda s: s.feedback.campaign_complaint_rate_to_pause,
    ),
    ("feedback", "campaign_window"): ("2d", 172800, lambda s: s.feedback.campaign_window_s),
    ("feedback", "campaign_min_calls"): ("50", 50, lambda s: s.feedback.campaign_min_calls),
    ("feedback", "carrier_block_window"): ("20", 20, lambda s: s.feedback.carrier_block_window),
    ("feedback", "carrier_block_share"): ("0.3", 0.3, lambda s: s.feedback.carrier_block_share),
    ("feedback", "complaint_expiry"): (
        "crm=30d,internal=7d",
        {"crm": 2592000, "internal": 604800},
        lambda s: dict(s.feedback.complaint_expiry),
    ),
    ("feedback", "complaint_sources"): (
        "ftc,ofcom",
        ("ftc", "ofcom"),
        lambda s: s.feedback.extra_sources,
    ),
    ("feedback", "attribution_window"): ("7d", 604800, lambda s: s.feedback.attribution_window_s),
    ("feedback", "health_calls"): ("200", 200, lambda s: s.feedback.health_calls),
    ("feedback", "short_call_seconds"): ("3", 3, lambda s: s.feedback.short_call_seconds),
    ("numbers", "default_region"): ("GB", "GB", lambda s: s.numbers.default_region),
    ("numbers", "fallback_timezone"): (
        "Europe/London",
        "Europe/London",
        lambda s: s.numbers.fallback_timezone,
    ),
}

# Keys that only make sense with a companion (proxy.listen needs credentials).
COMPANIONS: dict[tuple[str, str], dict[str, str]] = {
    ("proxy", "listen"): {"DIALGUARD_PROXY_USERNAME": "u", "DIALGUARD_PROXY_PASSWORD": "p"},
}


def env_name(section: str, key: str) -> str:
    return f"DIALGUARD_{section.upper()}_{key.upper()}"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dialguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path | None, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env)
    return caught.value.problems


def test_the_table_covers_every_configuration_key() -> None:
    # A key added to the schema needs a row above, so that its variable is tested too.
    assert set(EVERY_KEY) == set(_SCHEMA)


def test_built_in_defaults_need_no_file_and_no_environment() -> None:
    settings = load_settings(None, {})
    assert settings.source == "built-in defaults"
    assert settings.database.url is None
    assert settings.database.data_dir == default_data_dir()
    assert settings.database.pool_size == 20
    assert settings.ari.url == "http://127.0.0.1:8088/ari"
    assert settings.gate.fail_mode == "closed"
    assert settings.gate.decision_deadline == 0.5
    assert settings.gate.deny_cause == 21
    assert settings.gate.spool_dir == default_data_dir() / "spool"
    assert settings.api.listen == ("127.0.0.1", 8090) and settings.api.token is None
    assert settings.metrics.listen == ("127.0.0.1", 9108)
    assert settings.proxy.listen is None
    assert settings.numbers.default_region == "US"
    assert settings.numbers.fallback_timezone == "America/New_York"
    assert dict(settings.profiles) == builtin_profiles()


@pytest.mark.parametrize(("section", "key"), list(EVERY_KEY))
def test_every_key_is_read_from_the_file(tmp_path: Path, section: str, key: str) -> None:
    raw, parsed, get = EVERY_KEY[(section, key)]
    companions = "".join(
        f'{name.removeprefix("DIALGUARD_PROXY_").lower()} = "{value}"\n'
        for name, value in COMPANIONS.get((section, key), {}).items()
    )
    path = write(tmp_path, f"[{section}]\n{key} = '{raw}'\n{companions}")
    settings = load_settings(path, {})
    assert get(settings) == parsed
    assert settings.source == str(path)


@pytest.mark.parametrize(("section", "key"), list(EVERY_KEY))
def test_every_key_from_the_environment_overrides_the_file(
    tmp_path: Path, section: str, key: str
) -> None:
    raw, parsed, get = EVERY_KEY[(section, key)]
    file_settings = load_settings(None, {})
    # The file holds the default value, written out; the environment must win over it.
    default, _ = _SCHEMA[(section, key)]
    file_line = "" if default is None else f"{key} = {_toml(default)}\n"
    path = write(tmp_path, f"[{section}]\n{file_line}")
    env = {env_name(section, key): raw, **COMPANIONS.get((section, key), {})}
    settings = load_settings(path, env)
    assert get(settings) == parsed
    assert get(settings) != get(file_settings)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "'" + str(value) + "'"


def test_data_dir_has_the_short_alias_dialguard_data_dir(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\ndata_dir = '/from/file'\n")
    settings = load_settings(path, {"DIALGUARD_DATA_DIR": "/from/env"})
    assert settings.database.data_dir == Path("/from/env")
    assert settings.gate.spool_dir == Path("/from/env/spool")


def test_an_empty_optional_variable_unsets_the_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\nurl = 'postgresql://db/x'\n")
    assert load_settings(path, {"DIALGUARD_DATABASE_URL": ""}).database.url is None


def test_a_data_dir_with_a_tilde_is_expanded(tmp_path: Path) -> None:
    settings = load_settings(None, {"DIALGUARD_DATA_DIR": "~/dg"})
    assert settings.database.data_dir == Path.home() / "dg"


def test_the_default_data_dir_follows_xdg_data_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg/data")
    assert default_data_dir() == Path("/xdg/data/dialguard")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".local" / "share" / "dialguard"


def test_as_root_the_default_data_dir_is_var_lib_dialguard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg/data")
    assert default_data_dir() == Path("/var/lib/dialguard")


def test_every_invalid_value_is_reported_at_once_one_line_each(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[database]\npool_size = 'many'\n"
        "[ari]\nurl = 'pbx:8088'\n"
        "[gate]\nfail_mode = 'maybe'\ndecision_deadline = 'soon'\ndeny_cause = 200\n"
        "campaign_from = 'header:X'\ndestination_from = 'uri'\nenforce_gate = 'perhaps'\n"
        "[api]\nmax_body = -1\n"
        "[metrics]\nlisten = 'nowhere'\n"
        "[proxy]\ntrunk_patterns = ['^PJSIP/(.*)$', '(']\n"
        "[numbers]\ndefault_region = 'UK'\nfallback_timezone = 'Mars/Olympus'\n",
    )
    found = problems(path, {"DIALGUARD_API_LISTEN": "8090"})
    expected_prefixes = [
        "database.pool_size: expected a whole number",
        "ari.url: expected an http(s) URL",
        "gate.fail_mode: expected 'closed' or 'open'",
        "gate.decision_deadline: expected a duration like 500ms or 2s",
        "gate.deny_cause: a Q.850 cause is 1..127",
        "gate.campaign_from: expected arg:N or var:NAME",
        "gate.destination_from: expected exten, arg:N or var:NAME",
        "gate.enforce_gate: expected true or false",
        "DIALGUARD_API_LISTEN: expected HOST:PORT",
        "api.max_body: expected a whole number",
        "metrics.listen: expected HOST:PORT",
        "proxy.trunk_patterns: regex '^PJSIP/(.*)$' needs a named group (?P<destination>...)",
        "numbers.default_region: unknown region 'UK'",
        "numbers.fallback_timezone: unknown time zone 'Mars/Olympus'",
    ]
    assert len(found) == len(expected_prefixes)
    for prefix in expected_prefixes:
        assert sum(p.startswith(prefix) for p in found) == 1, (prefix, found)
    assert all("\n" not in p for p in found)
    assert str(ConfigError(found)) == "\n".join(found)


def test_a_bad_regex_is_reported_with_the_regex_error() -> None:
    found = problems(None, {"DIALGUARD_PROXY_TRUNK_PATTERNS": "("})
    assert len(found) == 1 and found[0].startswith("DIALGUARD_PROXY_TRUNK_PATTERNS: bad regex '('")


def test_a_problem_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[gate]\nfail_mode = 'closed'\n")
    assert problems(path, {"DIALGUARD_GATE_FAIL_MODE": "maybe"}) == [
        "DIALGUARD_GATE_FAIL_MODE: expected 'closed' or 'open', got 'maybe'"
    ]


def test_an_empty_data_dir_variable_means_the_default_data_dir() -> None:
    assert load_settings(None, {"DIALGUARD_DATA_DIR": ""}).database.data_dir == default_data_dir()


def test_decision_deadline_takes_milliseconds_or_a_duration() -> None:
    assert (
        load_settings(None, {"DIALGUARD_GATE_DECISION_DEADLINE": "250ms"}).gate.decision_deadline
        == 0.25
    )
    assert (
        load_settings(None, {"DIALGUARD_GATE_DECISION_DEADLINE": "1m"}).gate.decision_deadline
        == 60.0
    )
    with pytest.raises(ConfigError, match="expected a duration longer than 0, got '0ms'"):
        load_settings(None, {"DIALGUARD_GATE_DECISION_DEADLINE": "0ms"})


def test_unknown_sections_and_keys_are_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[databse]\nurl = 'x'\n[database]\nuri = 'x'\n[gate]\nfailmode = 'open'\n",
    )
    assert problems(path, {}) == [
        "databse: unknown section",
        "database.uri: unknown key",
        "gate.failmode: unknown key",
    ]


def test_unknown_keys_and_invalid_values_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\nuri = 'x'\npool_size = 'x'\n")
    found = problems(path, {})
    assert found[0] == "database.uri: unknown key"
    assert found[1].startswith("database.pool_size: expected a whole number")


def test_a_file_that_is_not_toml_is_one_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "[database\nurl = \n")
    found = problems(path, {})
    assert len(found) == 1 and found[0].startswith(f"{path}: ")


def test_a_missing_config_file_is_one_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert problems(missing, {}) == [f"{missing}: config file not found"]


def test_a_section_that_is_not_a_table_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, 'numbers = "US"\n')
    found = problems(path, {})
    assert len(found) == 1 and found[0].startswith("numbers")


def test_profiles_from_the_file_start_from_the_shipped_profile_of_that_name(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "[profiles.b2b]\ncalling_hours = '10:00-16:00'\n"
        "[profiles.collections]\ndestination_caps = ['1/24h']\ncallerid_caps = []\n",
    )
    settings = load_settings(path, {})
    b2b = settings.profiles["b2b"]
    assert b2b.calling_hours == Hours(10 * 3600, 16 * 3600)
    assert b2b.destination_caps == builtin_profiles()["b2b"].destination_caps
    collections = settings.profiles["collections"]
    assert collections.destination_caps == (Window(1, 86400),)
    assert collections.callerid_caps == ()
    assert collections.calling_hours == Hours(8 * 3600, 21 * 3600)
    assert settings.profiles["finance"] == builtin_profiles()["finance"]


def test_profiles_from_the_environment_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[profiles.b2b]\ncalling_hours = '10:00-16:00'\n")
    env = {
        "DIALGUARD_PROFILES_B2B_CALLING_HOURS": "11:00-15:00",
        "DIALGUARD_PROFILES_B2B_DESTINATION_CAPS": "1/24h,3/7d",
        "DIALGUARD_PROFILES_NIGHT_SHIFT_CALLING_HOURS": "00:00-24:00",
        "DIALGUARD_PROFILES_DEFAULT_REQUIRE_REGISTERED_CALLERID": "false",
    }
    settings = load_settings(path, env)
    assert settings.profiles["b2b"].calling_hours == Hours(11 * 3600, 15 * 3600)
    assert settings.profiles["b2b"].destination_caps == (Window(1, 86400), Window(3, 7 * 86400))
    assert settings.profiles["night_shift"].calling_hours == Hours(0, 86400)
    assert settings.profiles["default"].require_registered_callerid is False


def test_profile_raw_values_merge_the_shipped_profile_and_the_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[profiles.b2b]\ncalling_hours = '10:00-16:00'\n")
    settings = load_settings(path, {})
    raw = profile_raw(settings, "b2b")
    assert raw == {**builtin_raw("b2b"), "calling_hours": "10:00-16:00"}
    assert profile_raw(settings, "finance") == builtin_raw("finance")


def test_every_invalid_profile_value_is_reported_with_the_config_problems(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "[database]\npool_size = 'x'\n"
        "[profiles.b2b]\ncalling_hours = '18:00-09:00'\ndestination_caps = ['3/day']\n"
        "colour = 'red'\n",
    )
    found = problems(path, {"DIALGUARD_PROFILES_DEFAULT_DESTINATION_MIN_INTERVAL": "4 hours"})
    assert found[0].startswith("database.pool_size: ")
    rest = found[1:]
    assert len(rest) == 4
    assert any(p.startswith("profiles.b2b: unknown key 'colour'") for p in rest)
    assert any(p.startswith("profiles.b2b.calling_hours: calling hours must start") for p in rest)
    assert any(p.startswith("profiles.b2b.destination_caps: expected a duration") for p in rest)
    assert any(p.startswith("profiles.default.destination_min_interval: ") for p in rest)


def test_a_profile_variable_naming_no_key_is_reported() -> None:
    found = problems(None, {"DIALGUARD_PROFILES_B2B_COLOUR": "red"})
    assert len(found) == 1
    assert found[0].startswith("DIALGUARD_PROFILES_B2B_COLOUR: no profile key matches (known: ")


def test_profiles_must_be_tables(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "profiles = 'b2b'\n"), {}) == [
        "profiles: expected tables like [profiles.default]"
    ]
    assert problems(write(tmp_path, "[profiles]\nb2b = 3\n"), {}) == [
        "profiles.b2b: expected a table"
    ]


@pytest.mark.parametrize("listen", ["127.0.0.1:8090", "localhost:8090", "[::1]:8090"])
def test_the_api_needs_no_token_on_loopback(listen: str) -> None:
    assert load_settings(None, {"DIALGUARD_API_LISTEN": listen}).api.token is None


@pytest.mark.parametrize("listen", ["0.0.0.0:8090", "10.0.0.5:8090", "[::]:8090"])
def test_the_api_needs_a_token_off_loopback(listen: str) -> None:
    assert problems(None, {"DIALGUARD_API_LISTEN": listen}) == [
        "api.token: required when api.listen is not a loopback address"
    ]
    settings = load_settings(None, {"DIALGUARD_API_LISTEN": listen, "DIALGUARD_API_TOKEN": "t"})
    assert settings.api.token == "t"


def test_the_proxy_needs_dialer_credentials() -> None:
    assert problems(None, {"DIALGUARD_PROXY_LISTEN": "127.0.0.1:8091"}) == [
        "proxy.username/proxy.password: required when proxy.listen is set"
    ]


def test_missing_token_and_credentials_are_reported_with_the_other_problems() -> None:
    found = problems(
        None,
        {
            "DIALGUARD_DATABASE_POOL_SIZE": "many",
            "DIALGUARD_API_LISTEN": "0.0.0.0:8090",
            "DIALGUARD_PROXY_LISTEN": "0.0.0.0:8091",
        },
    )
    assert len(found) == 3


def test_the_config_file_is_found_by_flag_then_variable_then_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config_file(None, {}) is None
    (tmp_path / "dialguard.toml").write_text("", encoding="utf-8")
    assert find_config_file(None, {}) == Path("dialguard.toml")
    assert find_config_file(None, {"DIALGUARD_CONFIG": "/etc/dg.toml"}) == Path("/etc/dg.toml")
    assert find_config_file("/opt/x.toml", {"DIALGUARD_CONFIG": "/etc/dg.toml"}) == Path(
        "/opt/x.toml"
    )


def test_settings_are_frozen() -> None:
    settings = load_settings(None, {})
    with pytest.raises(AttributeError):
        settings.database = settings.database  # type: ignore[misc]


def test_a_misspelled_variable_is_reported_with_the_name_it_resembles() -> None:
    found = problems(None, {"DIALGUARD_GATE_FAILMODE": "open", "DIALGUARD_API_TOKN": "t"})
    assert found == [
        "DIALGUARD_API_TOKN: unknown variable (did you mean DIALGUARD_API_TOKEN?)",
        "DIALGUARD_GATE_FAILMODE: unknown variable (did you mean DIALGUARD_GATE_FAIL_MODE?)",
    ]


def test_a_variable_like_no_setting_at_all_is_reported_without_a_guess() -> None:
    assert problems(None, {"DIALGUARD_WHATEVER": "1"}) == ["DIALGUARD_WHATEVER: unknown variable"]


def test_the_variables_that_are_not_settings_are_not_reported(tmp_path: Path) -> None:
    config = write(tmp_path, "")
    env = {
        "DIALGUARD_CONFIG": str(config),
        "DIALGUARD_DATA_DIR": str(tmp_path),
        "DIALGUARD_TEST_DSN": "postgresql://x@y/z",
        "DIALGUARD_TEST_ASTERISK": "/opt/asterisk",
        "DIALGUARD_BENCH_DSN": "postgresql://x@y/z",
        "DIALGUARD_BENCH_DATA_DIR": "/tmp/bench",
        "DIALGUARD_ASTERISK_TARBALL": "/tmp/a.tar.gz",
        "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "09:00-20:00",
        "DIALGUARD_GATE_FAIL_MODE": "open",
    }
    settings = load_settings(config, env)
    assert settings.gate.fail_mode == "open"


@pytest.mark.parametrize(
    ("pool_size", "batches", "least"), [("0", "2", 4), ("3", "2", 4), ("2", "0", 3), ("5", "4", 6)]
)
def test_a_pool_smaller_than_the_batches_and_the_api_need_is_refused(
    pool_size: str, batches: str, least: int
) -> None:
    found = problems(
        None,
        {"DIALGUARD_DATABASE_POOL_SIZE": pool_size, "DIALGUARD_DATABASE_DECISION_BATCHES": batches},
    )
    assert len(found) == 1
    assert found[0].startswith(f"database.pool_size: {pool_size} is too few connections")
    assert found[0].endswith(f"set at least {least}")


def test_the_smallest_pool_that_serves_the_batches_and_the_api_is_taken() -> None:
    env = {"DIALGUARD_DATABASE_POOL_SIZE": "4", "DIALGUARD_DATABASE_DECISION_BATCHES": "2"}
    assert load_settings(None, env).database.pool_size == 4


@pytest.mark.parametrize("url", ["garbage", "postgresql://u@h:99999/db", "http://h/db"])
def test_a_malformed_database_url_is_a_config_problem(url: str) -> None:
    found = problems(None, {"DIALGUARD_DATABASE_URL": url})
    assert len(found) == 1 and found[0].startswith("DIALGUARD_DATABASE_URL: ")


@pytest.mark.parametrize(
    ("region", "zone"),
    [("US", "America/New_York"), ("GB", "Europe/London"), ("DE", "Europe/Berlin")],
)
def test_the_fallback_zone_follows_the_default_region(region: str, zone: str) -> None:
    settings = load_settings(None, {"DIALGUARD_NUMBERS_DEFAULT_REGION": region})
    assert settings.numbers.fallback_timezone == zone


def test_an_explicit_fallback_zone_wins_over_the_regions() -> None:
    env = {
        "DIALGUARD_NUMBERS_DEFAULT_REGION": "GB",
        "DIALGUARD_NUMBERS_FALLBACK_TIMEZONE": "Europe/Dublin",
    }
    assert load_settings(None, env).numbers.fallback_timezone == "Europe/Dublin"


def test_an_instance_id_is_an_application_name_suffix_and_defaults_to_host_and_pid() -> None:
    assert problems(None, {"DIALGUARD_GATE_INSTANCE_ID": "a b"}) == [
        "DIALGUARD_GATE_INSTANCE_ID: expected up to 63 letters, digits, '.', '_' or '-', got 'a b'"
    ]
    assert problems(None, {"DIALGUARD_GATE_MODE": "cluster"}) == [
        "DIALGUARD_GATE_MODE: expected 'stasis' or 'broadcast', got 'cluster'"
    ]
    settings = load_settings(None, {})
    assert settings.gate.mode == "stasis"
    assert settings.gate.instance_id.endswith(f"-{os.getpid()}")
