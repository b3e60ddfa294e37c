"""One frozen :class:`Settings` from ``dialguard.toml`` and ``DIALGUARD_*`` variables.

Every key ``section.key`` is also the variable ``DIALGUARD_<SECTION>_<KEY>`` (the environment
wins), plus the short forms DESIGN.md names (``DIALGUARD_DATA_DIR``). Every problem is collected
and reported at once, one line each, before anything connects.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dialguard.numbers import is_valid_region
from dialguard.policy.feedback import FeedbackPolicy
from dialguard.policy.profile import (
    PROFILE_KEYS,
    Profile,
    ProfileError,
    build_profile,
    builtin_profiles,
    builtin_raw,
)
from dialguard.policy.values import ValueSyntaxError, parse_duration

FailMode = Literal["closed", "open"]
GateMode = Literal["stasis", "broadcast"]


class ConfigError(Exception):
    """Invalid configuration; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str | None
    data_dir: Path
    pool_size: int
    decision_batches: int  # batches of decisions in flight at once; 0: each decision alone
    retention: int | None  # seconds of audit log kept; None keeps everything
    # How far a recorded decision's explicit time may be from the database's clock.
    clock_tolerance: float = 5.0


@dataclass(frozen=True, slots=True)
class AriSettings:
    url: str
    username: str
    password: str
    app: str
    trunks: tuple[str, ...]
    subscribe_all: bool


@dataclass(frozen=True, slots=True)
class GateSettings:
    fail_mode: FailMode
    decision_deadline: float
    deny_cause: int
    deny_label: str | None
    allow_label: str
    campaign_from: str
    destination_from: str
    enforce_gate: bool
    spool_dir: Path
    # "stasis": one instance holds the app; "broadcast": several instances share the calls
    # through StasisBroadcast, each under its own app name `<ari.app>-<instance_id>`.
    mode: GateMode = "stasis"
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class ApiSettings:
    listen: tuple[str, int]
    token: str | None
    max_body: int


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: tuple[str, int]
    per_callerid: bool


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: tuple[str, int] | None
    username: str | None
    password: str | None
    trunk_patterns: tuple[str, ...]
    campaign_variable: str


@dataclass(frozen=True, slots=True)
class NumberSettings:
    default_region: str
    fallback_timezone: str


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseSettings
    ari: AriSettings
    gate: GateSettings
    api: ApiSettings
    metrics: MetricsSettings
    proxy: ProxySettings
    numbers: NumberSettings
    profiles: Mapping[str, Profile]
    profiles_raw: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    feedback: FeedbackPolicy = field(default_factory=FeedbackPolicy)
    source: str = "built-in defaults"


def default_data_dir() -> Path:
    """``/var/lib/dialguard`` as root (the embedded server then runs as the system user
    ``dialguard``, which must reach it), else the user's data directory."""
    if os.geteuid() == 0:
        return Path("/var/lib/dialguard")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dialguard"


def default_instance_id() -> str:
    """The host's name and the process id: unique among the instances gating one Asterisk."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]) or "host"
    return f"{host[:40]}-{os.getpid()}"


# (section, key) -> (default, kind). Kinds parse both TOML values and environment strings.
_SCHEMA: dict[tuple[str, str], tuple[Any, str]] = {
    ("database", "url"): (None, "dsn?"),
    ("database", "data_dir"): (None, "path?"),
    ("database", "pool_size"): (20, "int"),
    ("database", "decision_batches"): (2, "int"),
    ("database", "retention"): ("400d", "retention"),
    ("database", "clock_tolerance"): ("5s", "seconds"),
    ("ari", "url"): ("http://127.0.0.1:8088/ari", "url"),
    ("ari", "username"): ("dialguard", "str"),
    ("ari", "password"): ("", "str"),
    ("ari", "app"): ("dialguard", "str"),
    ("ari", "trunks"): (["PJSIP/carrier"], "list"),
    ("ari", "subscribe_all"): (False, "bool"),
    ("gate", "fail_mode"): ("closed", "failmode"),
    ("gate", "decision_deadline"): ("500ms", "seconds"),
    ("gate", "deny_cause"): (21, "cause"),
    ("gate", "deny_label"): (None, "str?"),
    ("gate", "allow_label"): ("allowed", "str"),
    ("gate", "campaign_from"): ("arg:1", "campaign_from"),
    ("gate", "destination_from"): ("exten", "destination_from"),
    ("gate", "enforce_gate"): (False, "bool"),
    ("gate", "spool_dir"): (None, "path?"),
    ("gate", "mode"): ("stasis", "gatemode"),
    # None: the host's name and the process id (unique among instances sharing an Asterisk).
    ("gate", "instance_id"): (None, "instance_id?"),
    ("api", "listen"): ("127.0.0.1:8090", "listen"),
    ("api", "token"): (None, "str?"),
    ("api", "max_body"): (1048576, "int"),
    ("metrics", "listen"): ("127.0.0.1:9108", "listen"),
    ("metrics", "per_callerid"): (False, "bool"),
    ("proxy", "listen"): (None, "listen?"),
    ("proxy", "username"): (None, "str?"),
    ("proxy", "password"): (None, "str?"),
    ("proxy", "trunk_patterns"): ([r"^PJSIP/(?P<destination>[^@]+)@carrier$"], "regexes"),
    ("proxy", "campaign_variable"): ("CAMPAIGN", "str"),
    ("feedback", "complaints_to_rest"): (3, "int"),
    ("feedback", "complaints_window"): ("24h", "duration"),
    ("feedback", "complaint_rate_to_rest"): (0.005, "ratio"),
    ("feedback", "complaint_rate_calls"): (1000, "int"),
    ("feedback", "complaint_rate_min_calls"): (200, "int"),
    ("feedback", "campaign_complaint_rate_to_pause"): (0.01, "ratio"),
    ("feedback", "campaign_window"): ("24h", "duration"),
    ("feedback", "campaign_min_calls"): (200, "int"),
    ("feedback", "carrier_block_window"): (50, "int"),
    ("feedback", "carrier_block_share"): (0.5, "ratio"),
    ("feedback", "complaint_expiry"): ({}, "expiry_table"),
    ("feedback", "complaint_sources"): ([], "list"),
    ("feedback", "attribution_window"): ("30d", "duration"),
    ("feedback", "health_calls"): (1000, "int"),
    ("feedback", "short_call_seconds"): (6, "int"),
    ("numbers", "default_region"): ("US", "region"),
    # None: the zone of numbers.default_region (see region_zone).
    ("numbers", "fallback_timezone"): (None, "zone?"),
}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ENV_ALIASES = {"DIALGUARD_DATA_DIR": ("database", "data_dir")}
# DIALGUARD_* variables that are not settings: the config file's path, and what the tests,
# benchmarks and set-up scripts read. Any other DIALGUARD_* variable is a setting or a typo.
_ENV_NOT_SETTINGS = frozenset({"DIALGUARD_CONFIG", "DIALGUARD_ASTERISK_TARBALL"})
_ENV_NOT_SETTINGS_PREFIXES = ("DIALGUARD_TEST_", "DIALGUARD_BENCH_")
# Connections besides the decision batches' own: the admin API's reads, outcomes and the
# background tasks, and one streaming import, scrub or replay.
POOL_RESERVE = 2


def _parse(kind: str, value: Any, where: str) -> Any:
    optional = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ValueError("required")
    if base == "str":
        return str(value)
    if base == "path":
        return Path(str(value)).expanduser()
    if base == "int":
        if isinstance(value, bool) or not re.fullmatch(r"\d+", str(value)):
            raise ValueError(f"expected a whole number, got {value!r}")
        return int(value)
    if base == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if base in ("list", "regexes"):
        items = value if isinstance(value, list) else [p for p in str(value).split(",") if p]
        items = [str(i).strip() for i in items]
        if base == "regexes":
            for item in items:
                try:
                    pattern = re.compile(item)
                except re.error as exc:
                    raise ValueError(f"bad regex {item!r}: {exc}") from exc
                if "destination" not in pattern.groupindex:
                    raise ValueError(f"regex {item!r} needs a named group (?P<destination>...)")
        return tuple(items)
    if base == "dsn":
        problem = database_url_problem(str(value))
        if problem:
            raise ValueError(problem)
        return str(value)
    if base == "url":
        text = str(value)
        if not re.match(r"https?://[^/]+", text):
            raise ValueError(f"expected an http(s) URL, got {text!r}")
        return text.rstrip("/")
    if base == "seconds":
        text = str(value).strip()
        match = re.fullmatch(r"(\d+)ms", text)
        try:
            seconds = int(match.group(1)) / 1000 if match else float(parse_duration(text))
        except ValueSyntaxError as exc:
            raise ValueError(f"expected a duration like 500ms or 2s, got {value!r}") from exc
        if seconds <= 0:
            raise ValueError(f"expected a duration longer than 0, got {value!r}")
        return seconds
    if base == "duration":
        try:
            return parse_duration(str(value))
        except ValueSyntaxError as exc:
            raise ValueError(str(exc)) from None
    if base == "ratio":
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a fraction like 0.005, got {value!r}") from None
        if not 0 < ratio <= 1:
            raise ValueError(f"expected a fraction above 0 and at most 1, got {value!r}")
        return ratio
    if base == "expiry_table":
        # A TOML table {crm = "30d"}, or "crm=30d,internal=7d" from the environment.
        if isinstance(value, dict):
            pairs = [(str(k), str(v)) for k, v in value.items()]
        else:
            pairs = [tuple(p.split("=", 1)) for p in str(value).split(",") if p.strip()]  # type: ignore[misc]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"expected source=duration pairs, got {value!r}")
        try:
            return {k.strip(): parse_duration(v.strip()) for k, v in pairs}
        except ValueSyntaxError as exc:
            raise ValueError(str(exc)) from None
    if base == "retention":
        text = str(value).strip()
        if text == "off":
            return None
        try:
            seconds = parse_duration(text)
        except ValueSyntaxError as exc:
            raise ValueError(str(exc)) from None
        if seconds < 31 * 86400:
            raise ValueError(f"keep at least 31d, longer than any rule window, got {value!r}")
        return seconds
    if base == "failmode":
        if value not in ("closed", "open"):
            raise ValueError(f"expected 'closed' or 'open', got {value!r}")
        return value
    if base == "gatemode":
        if value not in ("stasis", "broadcast"):
            raise ValueError(f"expected 'stasis' or 'broadcast', got {value!r}")
        return value
    if base == "instance_id":
        text = str(value)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", text):
            raise ValueError(f"expected up to 63 letters, digits, '.', '_' or '-', got {text!r}")
        return text
    if base == "cause":
        cause = _parse("int", value, where)
        if not 1 <= cause <= 127:
            raise ValueError(f"a Q.850 cause is 1..127, got {value!r}")
        return cause
    if base == "campaign_from":
        text = str(value)
        if not re.fullmatch(r"arg:[1-9]\d*|var:[A-Za-z_][A-Za-z0-9_]*", text):
            raise ValueError(f"expected arg:N or var:NAME, got {value!r}")
        return text
    if base == "destination_from":
        text = str(value)
        if not re.fullmatch(r"exten|arg:[1-9]\d*|var:[A-Za-z_][A-Za-z0-9_]*", text):
            raise ValueError(f"expected exten, arg:N or var:NAME, got {value!r}")
        return text
    if base == "listen":
        text = str(value)
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return (host.strip("[]"), int(port))
    if base == "region":
        if not is_valid_region(str(value)):
            raise ValueError(f"unknown region {value!r} (use an ISO 3166 code like US or GB)")
        return str(value)
    if base == "zone":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(str(value))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return str(value)
    raise AssertionError(f"unknown kind {kind}")


def database_url_problem(url: str) -> str | None:
    """Why ``url`` is no PostgreSQL URL that asyncpg can use, or ``None``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"malformed PostgreSQL URL ({exc})"
    if parts.scheme not in ("postgresql", "postgres"):
        return "expected a URL like postgresql://user:password@host:5432/dbname"
    return None


def region_zone(region: str) -> str:
    """The time zone of ``region``'s example number: its only zone where it has one (GB:
    Europe/London), else the zone of its best-known area (US: America/New_York)."""
    import phonenumbers
    from phonenumbers import timezone

    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.FIXED_LINE)
    zones = timezone.time_zones_for_number(example) if example is not None else ()
    known = [z for z in zones if z != timezone.UNKNOWN_TIMEZONE]
    return known[0] if known else "UTC"


def _env_problems(env: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """A DIALGUARD_* variable that names no setting is reported, with the nearest names."""
    names = sorted(set(known))
    problems = []
    for var in sorted(env):
        if not var.startswith("DIALGUARD_") or var in names or var in _ENV_NOT_SETTINGS:
            continue
        if var.startswith(("DIALGUARD_PROFILES_", *_ENV_NOT_SETTINGS_PREFIXES)):
            continue  # profile variables are checked with the profiles
        close = difflib.get_close_matches(var, names, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{var}: unknown variable{hint}")
    return problems


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """``--config``, else ``DIALGUARD_CONFIG``, else ``./dialguard.toml`` if it exists."""
    if explicit:
        return Path(explicit)
    if env.get("DIALGUARD_CONFIG"):
        return Path(env["DIALGUARD_CONFIG"])
    local = Path("dialguard.toml")
    return local if local.is_file() else None


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate; raises :class:`ConfigError` listing every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: config file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: {exc}"]) from None
    known_sections = {s for s, _ in _SCHEMA} | {"profiles"}
    for section in list(data):
        if section not in known_sections:
            problems.append(f"{section}: unknown section")
        elif section != "profiles" and not isinstance(data[section], dict):
            problems.append(f"{section}: expected a table like [{section}]")
            del data[section]
        elif section != "profiles":
            for key in data[section]:
                if (section, key) not in _SCHEMA:
                    problems.append(f"{section}.{key}: unknown key")

    values: dict[tuple[str, str], Any] = {}
    env_keys = {f"DIALGUARD_{s.upper()}_{k.upper()}": (s, k) for s, k in _SCHEMA}
    env_keys.update(_ENV_ALIASES)
    problems.extend(_env_problems(env, env_keys))
    env_values = {sk: env[name] for name, sk in env_keys.items() if name in env}
    for (section, key), (default, kind) in _SCHEMA.items():
        raw = data.get(section, {}).get(key, default)
        origin = f"{section}.{key}"
        if (section, key) in env_values:
            raw = env_values[(section, key)]
            origin = next(n for n, sk in env_keys.items() if sk == (section, key) and n in env)
        try:
            values[(section, key)] = _parse(kind, raw, origin)
        except ValueError as exc:
            problems.append(f"{origin}: {exc}")

    profiles_raw = _profiles_raw(data.get("profiles", {}), env, problems)
    profiles = dict(builtin_profiles())
    for name, raw in profiles_raw.items():
        try:
            profiles[name] = build_profile(builtin_raw(name), raw, where=f"profiles.{name}")
        except ProfileError as exc:
            problems.extend(exc.problems)

    def v(section: str, key: str) -> Any:
        return values.get((section, key))

    api_listen = v("api", "listen")
    if api_listen and v("api", "token") is None and api_listen[0] not in _LOOPBACK:
        problems.append("api.token: required when api.listen is not a loopback address")
    if v("proxy", "listen") is not None and not (v("proxy", "username") and v("proxy", "password")):
        problems.append("proxy.username/proxy.password: required when proxy.listen is set")
    pool_size, batches = v("database", "pool_size"), v("database", "decision_batches")
    if pool_size is not None and batches is not None:
        needed = max(batches, 1) + POOL_RESERVE
        if pool_size < needed:
            problems.append(
                f"database.pool_size: {pool_size} is too few connections: the decision batches "
                f"take {max(batches, 1)} (database.decision_batches = {batches}) and the admin "
                f"API, outcomes and imports {POOL_RESERVE} more; set at least {needed}"
            )
    if problems:
        raise ConfigError(problems)

    data_dir = v("database", "data_dir") or default_data_dir()
    return Settings(
        database=DatabaseSettings(
            v("database", "url"),
            data_dir,
            v("database", "pool_size"),
            v("database", "decision_batches"),
            v("database", "retention"),
            v("database", "clock_tolerance"),
        ),
        ari=AriSettings(
            v("ari", "url"),
            v("ari", "username"),
            v("ari", "password"),
            v("ari", "app"),
            v("ari", "trunks"),
            v("ari", "subscribe_all"),
        ),
        gate=GateSettings(
            fail_mode=v("gate", "fail_mode"),
            decision_deadline=v("gate", "decision_deadline"),
            deny_cause=v("gate", "deny_cause"),
            deny_label=v("gate", "deny_label"),
            allow_label=v("gate", "allow_label"),
            campaign_from=v("gate", "campaign_from"),
            destination_from=v("gate", "destination_from"),
            enforce_gate=v("gate", "enforce_gate"),
            spool_dir=v("gate", "spool_dir") or data_dir / "spool",
            mode=v("gate", "mode"),
            instance_id=v("gate", "instance_id") or default_instance_id(),
        ),
        api=ApiSettings(api_listen, v("api", "token"), v("api", "max_body")),
        metrics=MetricsSettings(v("metrics", "listen"), v("metrics", "per_callerid")),
        proxy=ProxySettings(
            v("proxy", "listen"),
            v("proxy", "username"),
            v("proxy", "password"),
            v("proxy", "trunk_patterns"),
            v("proxy", "campaign_variable"),
        ),
        numbers=NumberSettings(
            v("numbers", "default_region"),
            v("numbers", "fallback_timezone") or region_zone(v("numbers", "default_region")),
        ),
        feedback=FeedbackPolicy(
            complaints_to_rest=v("feedback", "complaints_to_rest"),
            complaints_window_s=v("feedback", "complaints_window"),
            complaint_rate_to_rest=v("feedback", "complaint_rate_to_rest"),
            complaint_rate_calls=v("feedback", "complaint_rate_calls"),
            complaint_rate_min_calls=v("feedback", "complaint_rate_min_calls"),
            campaign_complaint_rate_to_pause=v("feedback", "campaign_complaint_rate_to_pause"),
            campaign_window_s=v("feedback", "campaign_window"),
            campaign_min_calls=v("feedback", "campaign_min_calls"),
            carrier_block_window=v("feedback", "carrier_block_window"),
            carrier_block_share=v("feedback", "carrier_block_share"),
            complaint_expiry=v("feedback", "complaint_expiry"),
            extra_sources=v("feedback", "complaint_sources"),
            attribution_window_s=v("feedback", "attribution_window"),
            health_calls=v("feedback", "health_calls"),
            short_call_seconds=v("feedback", "short_call_seconds"),
        ),
        profiles=profiles,
        profiles_raw={n: {**builtin_raw(n), **r} for n, r in profiles_raw.items()},
        source=str(path) if path else "built-in defaults",
    )


def _profiles_raw(
    table: Any, env: Mapping[str, str], problems: list[str]
) -> dict[str, dict[str, Any]]:
    """Profiles from the file plus ``DIALGUARD_PROFILES_<NAME>_<KEY>`` variables."""
    raw: dict[str, dict[str, Any]] = {}
    if not isinstance(table, dict):
        problems.append("profiles: expected tables like [profiles.default]")
        return raw
    for name, keys in table.items():
        if not isinstance(keys, dict):
            problems.append(f"profiles.{name}: expected a table")
            continue
        raw[name] = dict(keys)
    for var, value in env.items():
        if not var.startswith("DIALGUARD_PROFILES_"):
            continue
        rest = var.removeprefix("DIALGUARD_PROFILES_").lower()
        key = next((k for k in PROFILE_KEYS if rest.endswith("_" + k)), None)
        if key is None:
            problems.append(f"{var}: no profile key matches (known: {', '.join(PROFILE_KEYS)})")
            continue
        name = rest[: -len(key) - 1]
        raw.setdefault(name, {})[key] = value
    return raw


def profile_raw(settings: Settings, name: str) -> Mapping[str, Any]:
    """The raw values of profile ``name`` as configured (shipped values where not)."""
    return settings.profiles_raw.get(name) or builtin_raw(name)
