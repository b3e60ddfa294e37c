"""dialguard's metrics: the names and labels dashboards and alerts rely on, and their bounds."""

from __future__ import annotations

import re

import aiohttp
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dialguard.metrics import (
    DECISION_SECONDS_BUCKETS,
    MAX_EVENT_TYPES,
    OTHER_SOURCE,
    OVERFLOW_LABEL,
    REDACTED_LABEL,
    Metrics,
    looks_like_phone_number,
)
from dialguard.metrics_http import serve_metrics
from dialguard.policy.codes import (
    CARRIER_REJECTION_LABELS,
    COMPLAINT_SOURCES,
    CallerIdState,
    Outcome,
    RestReason,
    Rule,
    Verdict,
)

CAMPAIGN_METRICS = {
    "dialguard_decisions_total": "rule",
    "dialguard_complaints_total": "source",
    "dialguard_carrier_rejections_total": "cause",
    "dialguard_callerid_rests_total": "reason",
    "dialguard_call_outcomes_total": "outcome",
}
CAMPAIGN_LABEL_VALUES = {
    "dialguard_decisions_total": {"none", *Rule},
    "dialguard_complaints_total": {*COMPLAINT_SOURCES, OTHER_SOURCE},
    "dialguard_carrier_rejections_total": set(CARRIER_REJECTION_LABELS),
    "dialguard_callerid_rests_total": set(RestReason),
    "dialguard_call_outcomes_total": set(Outcome),
}


def make(
    *, per_callerid: bool = False, max_campaigns: int = 500, max_caller_ids: int = 1000
) -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(
        registry,
        per_callerid=per_callerid,
        build_version="1.2.3",
        max_campaigns=max_campaigns,
        max_caller_ids=max_caller_ids,
    )
    return metrics, registry


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(registry).decode()
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def label_values(registry: CollectorRegistry, name: str, label: str, **match: str) -> set[str]:
    return {
        labels[label]
        for sample_name, labels, _ in samples(registry)
        if sample_name == name and all(labels.get(k) == v for k, v in match.items())
    }


def test_every_metric_of_the_design_is_exported_from_the_start() -> None:
    _, registry = make()
    names = {name for name, _, _ in samples(registry)}
    for expected in (
        "dialguard_decisions_total",
        "dialguard_decision_seconds_bucket",
        "dialguard_decision_seconds_count",
        "dialguard_decision_batch_size_bucket",
        "dialguard_gc_pause_seconds_count",
        "dialguard_complaints_total",
        "dialguard_carrier_rejections_total",
        "dialguard_callerid_state",
        "dialguard_callerid_rests_total",
        "dialguard_call_outcomes_total",
        "dialguard_ungated_calls_total",
        "dialguard_ari_connected",
        "dialguard_store_errors_total",
        "dialguard_fail_open_decisions_total",
        "dialguard_build_info",
        "dialguard_dialplan_misconfigured_total",
        "dialguard_ari_reconnects_total",
        "dialguard_decisions_in_flight",
    ):
        assert expected in names


def test_every_verdict_and_rule_exists_at_zero_for_the_default_campaign() -> None:
    _, registry = make()
    assert (
        value(
            registry, "dialguard_decisions_total", verdict="allow", rule="none", campaign="default"
        )
        == 0
    )
    for rule in Rule:
        assert (
            value(
                registry, "dialguard_decisions_total", verdict="deny", rule=rule, campaign="default"
            )
            == 0
        ), rule


@pytest.mark.parametrize(("name", "label"), sorted(CAMPAIGN_METRICS.items()))
def test_every_label_value_exists_at_zero_for_the_default_campaign(name: str, label: str) -> None:
    _, registry = make()
    assert label_values(registry, name, label, campaign="default") == CAMPAIGN_LABEL_VALUES[name]
    assert all(v == 0 for n, _, v in samples(registry) if n == name)


def test_allow_is_counted_with_rule_none() -> None:
    metrics, registry = make()
    metrics.decision(Verdict.ALLOW, None, "spring", 0.002)
    metrics.decision("allow", "none", "spring", 0.002)
    assert (
        value(
            registry, "dialguard_decisions_total", verdict="allow", rule="none", campaign="spring"
        )
        == 2
    )


def test_a_deny_is_counted_under_its_rule_and_campaign() -> None:
    metrics, registry = make()
    metrics.decision(Verdict.DENY, Rule.BLACKLISTED, "spring", 0.003)
    assert (
        value(
            registry,
            "dialguard_decisions_total",
            verdict="deny",
            rule="blacklisted",
            campaign="spring",
        )
        == 1
    )
    assert (
        value(
            registry,
            "dialguard_decisions_total",
            verdict="deny",
            rule="blacklisted",
            campaign="default",
        )
        == 0
    )


def test_a_new_campaign_gets_every_series_at_zero_on_first_sight() -> None:
    metrics, registry = make()
    metrics.complaint("crm", "spring")
    for name, label in CAMPAIGN_METRICS.items():
        assert (
            label_values(registry, name, label, campaign="spring") == (CAMPAIGN_LABEL_VALUES[name])
        ), name
    assert value(registry, "dialguard_complaints_total", source="crm", campaign="spring") == 1
    assert value(registry, "dialguard_complaints_total", source="carrier", campaign="spring") == 0


def test_known_campaigns_can_be_created_before_their_first_call() -> None:
    metrics, registry = make()
    metrics.ensure_campaigns(["spring", "b2b"])
    assert label_values(registry, "dialguard_decisions_total", "campaign") == {
        "default",
        "spring",
        "b2b",
    }


def test_no_campaign_is_the_default_campaign() -> None:
    metrics, registry = make()
    metrics.call_outcome(Outcome.ANSWERED, None)
    metrics.call_outcome(Outcome.ANSWERED, "")
    assert (
        value(registry, "dialguard_call_outcomes_total", outcome="answered", campaign="default")
        == 2
    )


@pytest.mark.parametrize(
    ("verdict", "rule"),
    [("allow", "blacklisted"), ("deny", None), ("deny", "none"), ("maybe", None), ("deny", "x")],
)
def test_impossible_decisions_are_refused(verdict: str, rule: str | None) -> None:
    metrics, _ = make()
    with pytest.raises(ValueError):
        metrics.decision(verdict, rule, None, 0.001)


def test_a_complaint_source_an_operator_added_counts_as_other() -> None:
    metrics, registry = make()
    metrics.complaint("ofcom", "spring")
    value = registry.get_sample_value(
        "dialguard_complaints_total", {"source": OTHER_SOURCE, "campaign": "spring"}
    )
    assert value == 1.0


def test_label_values_outside_the_closed_sets_are_refused() -> None:
    metrics, registry = make()
    before = samples(registry)
    with pytest.raises(ValueError):
        metrics.carrier_rejection("sip_486", None)
    with pytest.raises(ValueError):
        metrics.callerid_rested("boredom", None)
    with pytest.raises(ValueError):
        metrics.call_outcome("exploded", None)
    with pytest.raises(ValueError):
        metrics.set_callerid_states({"sleeping": 1})
    assert samples(registry) == before


def test_carrier_rejections_are_counted_by_cause_and_campaign() -> None:
    metrics, registry = make()
    metrics.carrier_rejection("sip_607", "spring")
    assert (
        value(registry, "dialguard_carrier_rejections_total", cause="sip_607", campaign="spring")
        == 1
    )


def test_rests_are_counted_by_reason_and_campaign() -> None:
    metrics, registry = make()
    metrics.callerid_rested(RestReason.CARRIER_BLOCK_SUSPECTED, "spring")
    assert (
        value(
            registry,
            "dialguard_callerid_rests_total",
            reason="carrier_block_suspected",
            campaign="spring",
        )
        == 1
    )


def test_caller_id_states_not_given_are_zero() -> None:
    metrics, registry = make()
    metrics.set_callerid_states({CallerIdState.ACTIVE: 7, "rested": 2, "retired": 1})
    metrics.set_callerid_states({CallerIdState.ACTIVE: 5})
    assert value(registry, "dialguard_callerid_state", state="active") == 5
    assert value(registry, "dialguard_callerid_state", state="rested") == 0
    assert value(registry, "dialguard_callerid_state", state="retired") == 0


def test_decision_latency_lands_in_the_right_bucket() -> None:
    metrics, registry = make()
    metrics.decision("allow", None, None, 0.0007)
    metrics.decision("allow", None, None, 0.2)
    bucket = "dialguard_decision_seconds_bucket"
    assert value(registry, bucket, le="0.0005") == 0
    assert value(registry, bucket, le="0.001") == 1
    assert value(registry, bucket, le="0.25") == 2
    assert value(registry, "dialguard_decision_seconds_count") == 2
    assert DECISION_SECONDS_BUCKETS[0] == 0.0005 and DECISION_SECONDS_BUCKETS[-1] == 1.0
    assert 0.05 in DECISION_SECONDS_BUCKETS  # the latency alert's threshold is a bucket edge


def test_in_flight_is_up_only_inside_the_block() -> None:
    metrics, registry = make()
    with metrics.in_flight(), metrics.in_flight():
        assert value(registry, "dialguard_decisions_in_flight") == 2
    assert value(registry, "dialguard_decisions_in_flight") == 0


def test_in_flight_comes_down_when_the_decision_raises() -> None:
    metrics, registry = make()
    with pytest.raises(RuntimeError), metrics.in_flight():
        raise RuntimeError
    assert value(registry, "dialguard_decisions_in_flight") == 0


def test_plain_counters_and_gauges() -> None:
    metrics, registry = make()
    assert value(registry, "dialguard_ari_connected") == 0
    metrics.ari_connected(True)
    assert value(registry, "dialguard_ari_connected") == 1
    metrics.ari_connected(False)
    assert value(registry, "dialguard_ari_connected") == 0
    for method, name in [
        (metrics.ungated_call, "dialguard_ungated_calls_total"),
        (metrics.ari_reconnect, "dialguard_ari_reconnects_total"),
        (metrics.store_error, "dialguard_store_errors_total"),
        (metrics.fail_open_decision, "dialguard_fail_open_decisions_total"),
        (metrics.dialplan_misconfigured, "dialguard_dialplan_misconfigured_total"),
    ]:
        assert value(registry, name) == 0
        method()
        assert value(registry, name) == 1, name


def test_ari_events_count_by_type_up_to_a_bound() -> None:
    metrics, registry = make()
    for kind in ("StasisStart", "Dial", "Dial", "ChannelVarset"):
        metrics.ari_event(kind)
    assert value(registry, "dialguard_ari_events_total", type="Dial") == 2
    assert value(registry, "dialguard_ari_events_total", type="StasisStart") == 1
    for n in range(MAX_EVENT_TYPES + 5):
        metrics.ari_event(f"Made{n}")
    kinds = label_values(registry, "dialguard_ari_events_total", "type")
    assert len(kinds) == MAX_EVENT_TYPES + 1
    assert value(registry, "dialguard_ari_events_total", type=OVERFLOW_LABEL) == 8


def test_build_info_carries_the_version() -> None:
    _, registry = make()
    assert value(registry, "dialguard_build_info", version="1.2.3") == 1


def test_a_campaign_that_looks_like_a_phone_number_is_redacted() -> None:
    metrics, registry = make()
    metrics.decision("allow", None, "+49 30 1234567", 0.001)
    metrics.decision("allow", None, "4930123456", 0.001)
    campaigns = label_values(registry, "dialguard_decisions_total", "campaign")
    assert campaigns == {"default", REDACTED_LABEL}
    assert (
        value(
            registry,
            "dialguard_decisions_total",
            verdict="allow",
            rule="none",
            campaign=REDACTED_LABEL,
        )
        == 2
    )


@pytest.mark.parametrize(
    "text", ["+4930123456", "030 123 4567", "(030) 123-4567", "lead4930123456"]
)
def test_phone_numbers_are_recognised(text: str) -> None:
    assert looks_like_phone_number(text)


@pytest.mark.parametrize("text", ["spring-2024", "b2b", "q3 renewals 2025", "112", "default"])
def test_ordinary_campaign_names_are_kept(text: str) -> None:
    assert not looks_like_phone_number(text)


def test_campaign_labels_are_bounded() -> None:
    metrics, registry = make(max_campaigns=3)
    for n in range(10):
        metrics.decision("allow", None, f"c{n}", 0.001)
    campaigns = label_values(registry, "dialguard_decisions_total", "campaign")
    assert campaigns == {"default", "c0", "c1", OVERFLOW_LABEL}
    assert (
        value(
            registry,
            "dialguard_decisions_total",
            verdict="allow",
            rule="none",
            campaign=OVERFLOW_LABEL,
        )
        == 8
    )


def test_no_label_value_is_a_phone_number_without_per_callerid() -> None:
    metrics, registry = make()
    drive_every_method(metrics, campaign="+4930123456", caller_id="+4930999999")
    digits = re.compile(r"\d{7}")
    for name, labels, _ in samples(registry):
        for label, label_value in labels.items():
            assert not digits.search(label_value), (name, label, label_value)


def test_without_per_callerid_there_is_no_caller_id_label() -> None:
    metrics, registry = make()
    drive_every_method(metrics, campaign="spring", caller_id="+4930999999")
    assert all("caller_id" not in labels for _, labels, _ in samples(registry))
    assert not any(name.startswith("dialguard_callerid_calls") for name, _, _ in samples(registry))


def test_per_callerid_counts_outcomes_and_complaints_per_caller_id() -> None:
    metrics, registry = make(per_callerid=True)
    metrics.call_outcome(Outcome.CARRIER_REJECTED, "spring", caller_id="+4930111111")
    metrics.complaint("carrier", "spring", caller_id="+4930111111")
    calls = "dialguard_callerid_calls_total"
    assert label_values(registry, calls, "outcome", caller_id="+4930111111") == set(Outcome)
    assert value(registry, calls, caller_id="+4930111111", outcome="carrier_rejected") == 1
    assert value(registry, calls, caller_id="+4930111111", outcome="answered") == 0
    assert value(registry, "dialguard_callerid_complaints_total", caller_id="+4930111111") == 1


def test_per_callerid_ignores_calls_without_caller_id() -> None:
    metrics, registry = make(per_callerid=True)
    metrics.call_outcome(Outcome.ANSWERED, "spring")
    metrics.call_outcome(Outcome.ANSWERED, "spring", caller_id="")
    assert label_values(registry, "dialguard_callerid_calls_total", "caller_id") == set()


def test_caller_id_labels_are_bounded() -> None:
    metrics, registry = make(per_callerid=True, max_caller_ids=2)
    for n in range(5):
        metrics.call_outcome(Outcome.ANSWERED, None, caller_id=f"+493000000{n}")
    assert label_values(registry, "dialguard_callerid_calls_total", "caller_id") == {
        "+4930000000",
        "+4930000001",
        OVERFLOW_LABEL,
    }
    assert (
        value(
            registry, "dialguard_callerid_calls_total", caller_id=OVERFLOW_LABEL, outcome="answered"
        )
        == 3
    )


def test_the_global_registry_is_never_touched() -> None:
    before = {m.name for m in prometheus_client.REGISTRY.collect()}
    metrics, _ = make(per_callerid=True)
    drive_every_method(metrics, campaign="spring", caller_id="+4930999999")
    assert {m.name for m in prometheus_client.REGISTRY.collect()} == before
    assert not any(name.startswith("dialguard") for name in before)


def test_two_instances_do_not_share_series() -> None:
    first, first_registry = make()
    _, second_registry = make()
    first.ungated_call()
    assert value(first_registry, "dialguard_ungated_calls_total") == 1
    assert value(second_registry, "dialguard_ungated_calls_total") == 0


async def test_the_metrics_endpoint_serves_the_registry_in_the_text_format() -> None:
    metrics, registry = make()
    metrics.decision("deny", "calling_hours", "spring", 0.004)
    runner = await serve_metrics(registry, "127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{host}:{port}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
                body = await response.text()
            async with session.get(f"http://{host}:{port}/other") as response:
                assert response.status == 404
    finally:
        await runner.cleanup()
    assert (
        'dialguard_decisions_total{campaign="spring",rule="calling_hours",verdict="deny"} 1.0'
        in body
    )


def drive_every_method(metrics: Metrics, *, campaign: str, caller_id: str) -> None:
    metrics.decision("allow", None, campaign, 0.001)
    metrics.decision("deny", "blacklisted", campaign, 0.001)
    metrics.complaint("crm", campaign, caller_id=caller_id)
    metrics.carrier_rejection("q850_21", campaign)
    metrics.callerid_rested("complaints", campaign)
    metrics.set_callerid_states({"active": 3})
    metrics.call_outcome("answered", campaign, caller_id=caller_id)
    metrics.ungated_call()
    metrics.ari_connected(True)
    metrics.ari_reconnect()
    metrics.store_error()
    metrics.fail_open_decision()
    metrics.dialplan_misconfigured()
    with metrics.in_flight():
        pass
