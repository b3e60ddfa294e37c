"""Every dialguard metric, registered on a registry that the composition root injects.

The global ``prometheus_client.REGISTRY`` is never touched: tests and the demo build as many
independent ``Metrics`` as they like, and nothing leaks between them.

Label values come from the closed sets in :mod:`dialguard.policy.codes`, plus two open sets that
are bounded here: campaign names and, only when ``per_callerid`` is switched on, caller IDs. No
method takes a destination number, and a campaign name that looks like a phone number is reported
as ``_redacted``, so a misrouted dialplan argument cannot leak destinations into Prometheus.

Every series a dashboard or alert reads exists at 0 from construction (for campaign ``default``)
or from the first time a campaign or caller ID is seen, so ``rate()`` and ``increase()`` see the
first event instead of starting from it, and panels show 0 rather than "no data".

Every method is synchronous and cheap: on the hot path, a dict lookup of a child resolved in
advance and its increment (no ``labels()`` call); only the first sight of a campaign or caller ID
takes this class's lock and creates series.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dialguard.policy.codes import (
    CARRIER_REJECTION_LABELS,
    COMPLAINT_SOURCES,
    DEFAULT_CAMPAIGN,
    CallerIdState,
    Outcome,
    RestReason,
    Rule,
    Verdict,
)

__all__ = [
    "BACKGROUND_TASKS",
    "DECISION_SECONDS_BUCKETS",
    "DEFAULT_CAMPAIGN",
    "DEFAULT_MAX_CALLER_IDS",
    "DEFAULT_MAX_CAMPAIGNS",
    "MAX_EVENT_TYPES",
    "NO_RULE",
    "OTHER_SOURCE",
    "OVERFLOW_LABEL",
    "REDACTED_LABEL",
    "InstanceMetrics",
    "Metrics",
    "looks_like_phone_number",
]

# The campaign label of a call that names no campaign.
# The rule label of an allow: the rule label is never empty, so queries can match on it.
NO_RULE: Final = "none"
# Where values beyond the cardinality bound go, instead of growing Prometheus without limit.
OVERFLOW_LABEL: Final = "_other"
# Distinct ARI event type labels before the rest count as OVERFLOW_LABEL (Asterisk 22 has ~50).
MAX_EVENT_TYPES: Final = 100
# What a campaign name that looks like a phone number is reported as.
REDACTED_LABEL: Final = "_redacted"

DEFAULT_MAX_CAMPAIGNS: Final = 500
DEFAULT_MAX_CALLER_IDS: Final = 1000

# A decision is a few dict lookups plus one database round trip: typically 0.5-5 ms, with the
# deadline (500 ms by default) as the ceiling. The buckets resolve p50 and p99 across that range
# and put one edge on the 50 ms alert threshold.
DECISION_BATCH_BUCKETS: Final[tuple[float, ...]] = (1, 2, 4, 8, 16, 32, 64)
# A young collection takes well under a millisecond; a full one over 10 ms stalls every call.
GC_PAUSE_BUCKETS: Final[tuple[float, ...]] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

DECISION_SECONDS_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

# Seven digits in a row, or a value made only of digits and dialling punctuation with seven or
# more digits, is treated as a phone number. Campaign names should not carry such runs.
_DIGIT_RUN = re.compile(r"\d{7}")
_DIALLED = re.compile(r"\+?[\d\s().\-/]+")
_MIN_PHONE_DIGITS: Final = 7

_DECISION_KEYS: Final[tuple[tuple[str, str], ...]] = (
    (Verdict.ALLOW.value, NO_RULE),
    *((Verdict.DENY.value, rule.value) for rule in Rule),
)
_COMPLAINT_SOURCES: Final = frozenset(COMPLAINT_SOURCES)
OTHER_SOURCE: Final = "other"
_REJECTION_LABELS: Final = frozenset(CARRIER_REJECTION_LABELS)
_STATES: Final[tuple[str, ...]] = tuple(state.value for state in CallerIdState)
_REASONS: Final[tuple[str, ...]] = tuple(reason.value for reason in RestReason)
_OUTCOMES: Final[tuple[str, ...]] = tuple(outcome.value for outcome in Outcome)
_RESERVED_LABELS: Final = frozenset({OVERFLOW_LABEL, REDACTED_LABEL})
# The background work whose errors are counted: the label set of dialguard_background_errors_total.
BACKGROUND_TASKS: Final[tuple[str, ...]] = (
    "housekeeping",
    "outcome_sink",
    "spool_write",
    "spool_replay",
    "ari_subscribe",
    "ari_reconcile",
    "instances",
)


def looks_like_phone_number(value: str) -> bool:
    """True when ``value`` could be a phone number and so must not become a label value."""
    if _DIGIT_RUN.search(value):
        return True
    if _DIALLED.fullmatch(value):
        return sum(ch.isdigit() for ch in value) >= _MIN_PHONE_DIGITS
    return False


@dataclass(frozen=True, slots=True)
class _CampaignSeries:
    """The labelled children of one campaign, resolved once so the hot path skips ``labels()``."""

    decisions: Mapping[tuple[str, str], Counter]
    complaints: Mapping[str, Counter]
    carrier_rejections: Mapping[str, Counter]
    rests: Mapping[str, Counter]
    outcomes: Mapping[str, Counter]


@dataclass(frozen=True, slots=True)
class _CallerIdSeries:
    calls: Mapping[str, Counter]
    complaints: Counter


class Metrics:
    """All of dialguard's metrics on one injected registry.

    ``per_callerid`` adds ``dialguard_callerid_calls_total{caller_id,outcome}`` and
    ``dialguard_callerid_complaints_total{caller_id}``; without it no caller-ID label exists at
    all. Caller IDs are the operator's own numbers, never destinations, and are still bounded by
    ``max_caller_ids``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        per_callerid: bool = False,
        build_version: str,
        max_campaigns: int = DEFAULT_MAX_CAMPAIGNS,
        max_caller_ids: int = DEFAULT_MAX_CALLER_IDS,
    ) -> None:
        if max_campaigns < 1 or max_caller_ids < 1:
            raise ValueError("max_campaigns and max_caller_ids must be at least 1")
        self.registry: Final = registry
        self.per_callerid: Final = per_callerid
        self._max_campaigns = max_campaigns
        self._max_caller_ids = max_caller_ids
        self._lock = threading.Lock()

        self._decisions = Counter(
            "dialguard_decisions_total",
            "Call decisions by verdict, deciding rule (none for an allow) and campaign. "
            'A fail-closed decision is rule="store_unavailable".',
            ("verdict", "rule", "campaign"),
            registry=registry,
        )
        self._decision_seconds = Histogram(
            "dialguard_decision_seconds",
            "Time from a call reaching the decider to its verdict.",
            buckets=DECISION_SECONDS_BUCKETS,
            registry=registry,
        )
        self._decision_batch = Histogram(
            "dialguard_decision_batch_size",
            "Recorded decisions carried by each database round trip (1: the decision went "
            "alone). Batches grow when decisions arrive faster than the database answers.",
            buckets=DECISION_BATCH_BUCKETS,
            registry=registry,
        )
        self._gc_pauses = Histogram(
            "dialguard_gc_pause_seconds",
            "Garbage collections by generation and how long each stalled the event loop "
            "(every call in flight waits meanwhile).",
            ("generation",),
            buckets=GC_PAUSE_BUCKETS,
            registry=registry,
        )
        self._gc_pause_children = [self._gc_pauses.labels(generation=str(g)) for g in range(3)]
        self._in_flight = Gauge(
            "dialguard_decisions_in_flight",
            "Decisions started and not yet finished.",
            registry=registry,
        )
        self._complaints = Counter(
            "dialguard_complaints_total",
            "Complaints received, by source and campaign.",
            ("source", "campaign"),
            registry=registry,
        )
        self._carrier_rejections = Counter(
            "dialguard_carrier_rejections_total",
            "Allowed calls the carrier refused (Q.850 21 or SIP 403/603/607/608), by cause.",
            ("cause", "campaign"),
            registry=registry,
        )
        self._callerid_state = Gauge(
            "dialguard_callerid_state",
            "Registered caller IDs in each state.",
            ("state",),
            registry=registry,
        )
        self._callerid_rests = Counter(
            "dialguard_callerid_rests_total",
            "Caller IDs put to rest, by reason and campaign.",
            ("reason", "campaign"),
            registry=registry,
        )
        self._call_outcomes = Counter(
            "dialguard_call_outcomes_total",
            "What became of allowed calls, by outcome and campaign.",
            ("outcome", "campaign"),
            registry=registry,
        )
        self._ungated_calls = Counter(
            "dialguard_ungated_calls_total",
            "Trunk channels that no decision allowed (dialplan or ARI bypass).",
            registry=registry,
        )
        self._dialplan_misconfigured = Counter(
            "dialguard_dialplan_misconfigured_total",
            "Allowed channels that died with cause 0 right after continue: the dialplan label "
            "dialguard jumps to does not exist.",
            registry=registry,
        )
        self._ari_connected = Gauge(
            "dialguard_ari_connected",
            "1 while the ARI events websocket is connected, else 0.",
            registry=registry,
        )
        self._ari_reconnects = Counter(
            "dialguard_ari_reconnects_total",
            "ARI websocket connections established after the first.",
            registry=registry,
        )
        self._ari_events = Counter(
            "dialguard_ari_events_total",
            "ARI events received on the events websocket, by type: those acted on and those"
            " dropped unread alike.",
            ["type"],
            registry=registry,
        )
        self._ari_event_series: dict[str, Counter] = {}
        self._store_errors = Counter(
            "dialguard_store_errors_total",
            "Database calls that failed or missed their deadline.",
            registry=registry,
        )
        self._fail_open_decisions = Counter(
            "dialguard_fail_open_decisions_total",
            "Calls allowed without the store's checks because of fail mode open.",
            registry=registry,
        )
        self._background_errors = Counter(
            "dialguard_background_errors_total",
            "Errors met by background work, by task: a loop that died and was restarted, a "
            "housekeeping step, an outcome write, a spool write or write-back, an ARI "
            "subscription or reconciliation attempt. Each was logged and retried.",
            ("task",),
            registry=registry,
        )
        self._background_children = {
            task: self._background_errors.labels(task=task) for task in BACKGROUND_TASKS
        }
        build_info = Gauge(
            "dialguard_build_info",
            "Always 1; the version label tells which dialguard is running.",
            ("version",),
            registry=registry,
        )
        build_info.labels(version=build_version).set(1)

        self._callerid_calls: Counter | None = None
        self._callerid_complaints: Counter | None = None
        if per_callerid:
            self._callerid_calls = Counter(
                "dialguard_callerid_calls_total",
                "Completed calls per caller ID, by outcome.",
                ("caller_id", "outcome"),
                registry=registry,
            )
            self._callerid_complaints = Counter(
                "dialguard_callerid_complaints_total",
                "Complaints per caller ID.",
                ("caller_id",),
                registry=registry,
            )

        # Keyed by label value; "" is an alias of the default campaign. A raw value that was
        # redacted or overflowed is never a key, so these dicts stay within the bounds.
        self._campaigns: dict[str, _CampaignSeries] = {}
        self._campaign_count = 0
        self._caller_ids: dict[str, _CallerIdSeries] = {}
        self._campaigns[""] = self._admit_campaign(DEFAULT_CAMPAIGN)
        self.set_callerid_states({})
        self._ari_connected.set(0)

    # -- decisions ---------------------------------------------------------------------------

    def decision(
        self,
        verdict: Verdict | str,
        rule: Rule | str | None,
        campaign: str | None,
        seconds: float,
    ) -> None:
        """Count one decision and observe how long it took.

        ``rule`` is None (or ``"none"``) for an allow and the deciding rule for a deny. A
        fail-open allow is an allow here plus :meth:`fail_open_decision`.
        """
        key = (str(verdict), NO_RULE if rule is None else str(rule))
        child = self._series(campaign).decisions.get(key)
        if child is None:
            raise ValueError(f"no decision is verdict={key[0]!r} rule={key[1]!r}")
        child.inc()
        self._decision_seconds.observe(seconds)

    def decision_batch(self, size: int) -> None:
        """Observe one database round trip that carried ``size`` recorded decisions."""
        self._decision_batch.observe(size)

    def gc_pause(self, generation: int, seconds: float) -> None:
        """Observe one garbage collection of ``generation`` (0, 1 or 2)."""
        self._gc_pause_children[min(max(generation, 0), 2)].observe(seconds)

    def in_flight(self) -> AbstractContextManager[None]:
        """Context manager that holds ``dialguard_decisions_in_flight`` up while it is open."""
        return self._in_flight.track_inprogress()

    def fail_open_decision(self) -> None:
        self._fail_open_decisions.inc()

    def store_error(self) -> None:
        self._store_errors.inc()

    def background_error(self, task: str) -> None:
        """Count one error of background ``task`` (one of :data:`BACKGROUND_TASKS`)."""
        child = self._background_children.get(task)
        if child is None:
            raise ValueError(f"no background task is called {task!r}")
        child.inc()

    # -- feedback ----------------------------------------------------------------------------

    def complaint(self, source: str, campaign: str | None, caller_id: str | None = None) -> None:
        """Count a complaint; sources an operator added beyond the shipped ones count as
        ``other``, so the label stays a closed set."""
        label = source if source in _COMPLAINT_SOURCES else OTHER_SOURCE
        self._series(campaign).complaints[label].inc()
        if caller_id and self._callerid_complaints is not None:
            self._callerid_series(caller_id).complaints.inc()

    def carrier_rejection(self, label: str, campaign: str | None) -> None:
        """Count a carrier refusal; ``label`` is one of ``CARRIER_REJECTION_LABELS``."""
        if label not in _REJECTION_LABELS:
            raise ValueError(f"unknown carrier rejection label {label!r}")
        self._series(campaign).carrier_rejections[label].inc()

    def callerid_rested(self, reason: RestReason | str, campaign: str | None) -> None:
        child = self._series(campaign).rests.get(str(reason))
        if child is None:
            raise ValueError(f"unknown rest reason {reason!r}")
        child.inc()

    def set_callerid_states(self, counts: Mapping[str, int]) -> None:
        """Publish how many caller IDs are in each state; a state not in ``counts`` is 0."""
        unknown = set(map(str, counts)) - set(_STATES)
        if unknown:
            raise ValueError(f"unknown caller-ID states {sorted(unknown)!r}")
        by_state = {str(state): count for state, count in counts.items()}
        for state in _STATES:
            self._callerid_state.labels(state=state).set(by_state.get(state, 0))

    def call_outcome(
        self, outcome: Outcome | str, campaign: str | None, caller_id: str | None = None
    ) -> None:
        """Count what became of an allowed call; per caller ID too when that is switched on."""
        child = self._series(campaign).outcomes.get(str(outcome))
        if child is None:
            raise ValueError(f"unknown call outcome {outcome!r}")
        child.inc()
        if caller_id and self._callerid_calls is not None:
            self._callerid_series(caller_id).calls[str(outcome)].inc()

    # -- Asterisk side -----------------------------------------------------------------------

    def ungated_call(self) -> None:
        self._ungated_calls.inc()

    def dialplan_misconfigured(self) -> None:
        self._dialplan_misconfigured.inc()

    def ari_connected(self, connected: bool) -> None:
        self._ari_connected.set(1 if connected else 0)

    def ari_reconnect(self) -> None:
        self._ari_reconnects.inc()

    def ari_event(self, kind: str) -> None:
        """One event of type ``kind`` arrived. Asterisk's event types are a closed set of a few
        dozen; anything past MAX_EVENT_TYPES distinct names is counted as ``_other``."""
        series = self._ari_event_series.get(kind)
        if series is None:
            with self._lock:
                if len(self._ari_event_series) >= MAX_EVENT_TYPES:
                    kind = OVERFLOW_LABEL
                series = self._ari_event_series.get(kind) or self._ari_events.labels(kind)
                self._ari_event_series[kind] = series
        series.inc()

    # -- series management -------------------------------------------------------------------

    def ensure_campaigns(self, campaigns: Iterable[str]) -> None:
        """Create the series of campaigns known at start, so they show 0 before their first call."""
        for campaign in campaigns:
            self._series(campaign)

    def _series(self, campaign: str | None) -> _CampaignSeries:
        series = self._campaigns.get(campaign or "")
        if series is not None:
            return series
        return self._admit_campaign(campaign or "")

    def _admit_campaign(self, campaign: str) -> _CampaignSeries:
        """Slow path, once per campaign: pick its label and create its series at 0."""
        label = REDACTED_LABEL if looks_like_phone_number(campaign) else campaign
        with self._lock:
            series = self._campaigns.get(label)
            if series is None and label not in _RESERVED_LABELS:
                if self._campaign_count >= self._max_campaigns:
                    label = OVERFLOW_LABEL
                    series = self._campaigns.get(label)
                else:
                    self._campaign_count += 1
            if series is None:
                series = self._new_campaign_series(label)
                self._campaigns[label] = series
        return series

    def _new_campaign_series(self, campaign: str) -> _CampaignSeries:
        return _CampaignSeries(
            decisions={
                (verdict, rule): self._decisions.labels(verdict, rule, campaign)
                for verdict, rule in _DECISION_KEYS
            },
            complaints={
                s: self._complaints.labels(s, campaign) for s in (*COMPLAINT_SOURCES, OTHER_SOURCE)
            },
            carrier_rejections={
                c: self._carrier_rejections.labels(c, campaign) for c in CARRIER_REJECTION_LABELS
            },
            rests={r: self._callerid_rests.labels(r, campaign) for r in _REASONS},
            outcomes={o: self._call_outcomes.labels(o, campaign) for o in _OUTCOMES},
        )

    def _callerid_series(self, caller_id: str) -> _CallerIdSeries:
        series = self._caller_ids.get(caller_id)
        if series is not None:
            return series
        with self._lock:
            label = caller_id
            if label not in self._caller_ids and len(self._caller_ids) >= self._max_caller_ids:
                label = OVERFLOW_LABEL
            series = self._caller_ids.get(label)
            if series is None:
                calls, complaints = self._callerid_calls, self._callerid_complaints
                assert calls is not None and complaints is not None  # only called when switched on
                series = _CallerIdSeries(
                    calls={o: calls.labels(label, o) for o in _OUTCOMES},
                    complaints=complaints.labels(label),
                )
                self._caller_ids[label] = series
        return series


# What became of a claim of a broadcast call (dialguard_broadcast_claims_total{result}).
CLAIM_RESULTS: Final[tuple[str, ...]] = ("won", "lost", "late", "error")


class InstanceMetrics:
    """The metrics of one instance among several (``gate.mode = "broadcast"``), and readiness.

    ``dialguard_ready{mode}`` is read at each scrape from ``ready``, in either mode, so that
    alerts can count the ready instances of a group.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        mode: str,
        ready: Callable[[], bool],
        background_error: Callable[[str], None],
    ) -> None:
        self._ready = Gauge(
            "dialguard_ready",
            "1 while this instance is ready (/readyz answers 200), by gate mode.",
            ("mode",),
            registry=registry,
        )
        self._ready.labels(mode=mode).set_function(lambda: 1.0 if ready() else 0.0)
        self._alive = Gauge(
            "dialguard_instances_alive",
            "Instances of the group this instance sees alive, itself included (broadcast mode).",
            registry=registry,
        )
        self._mismatch = Gauge(
            "dialguard_profiles_mismatch",
            "1 while this instance's profiles differ from the oldest live instance's.",
            registry=registry,
        )
        claims = Counter(
            "dialguard_broadcast_claims_total",
            "Claims of broadcast calls, by result: won, lost (409), late (404), error.",
            ("result",),
            registry=registry,
        )
        self._claims = {result: claims.labels(result=result) for result in CLAIM_RESULTS}
        self._takeovers = Counter(
            "dialguard_takeovers_total",
            "Dead instances whose parked calls this instance decided.",
            registry=registry,
        )
        self._takeover_calls = Counter(
            "dialguard_takeover_calls_total",
            "Calls parked with a dead instance that this instance decided.",
            registry=registry,
        )
        self.background_error = background_error

    def claim(self, result: str) -> None:
        self._claims[result].inc()

    def instances_alive(self, count: int) -> None:
        self._alive.set(count)

    def profiles_mismatch(self, mismatch: bool) -> None:
        self._mismatch.set(1 if mismatch else 0)

    def takeover(self, calls: int) -> None:
        self._takeovers.inc()
        self._takeover_calls.inc(calls)
