"""Every dashboard query and every alert expression works against a real Prometheus.

A traffic generator drives a ``Metrics`` registry through every verdict, rule, complaint source,
rejection cause, outcome and failure; the registry is served over HTTP, and a real Prometheus
scrapes it every second. Then each query of each panel (template variables filled in) and each
alert expression must parse and return data. The traffic is a bad day on purpose: every alert
condition holds, so every alert expression has something to return.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from prometheus_client import CollectorRegistry

from dialguard.metrics import (
    BACKGROUND_TASKS,
    CLAIM_RESULTS,
    REDACTED_LABEL,
    InstanceMetrics,
    Metrics,
)
from dialguard.metrics_http import serve_metrics
from dialguard.policy.codes import (
    CARRIER_REJECTION_LABELS,
    COMPLAINT_SOURCES,
    Outcome,
    RestReason,
    Rule,
)
from tests.system.prometheus_harness import (
    RunningPrometheus,
    free_port,
    running_prometheus,
    sample_value,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "dialguard.json"
ALERTS = ROOT / "prometheus" / "alerts.yml"

CAMPAIGNS = ("default", "spring-sale", "b2b renewals")
# A dialplan that passes the destination where the campaign belongs: must never become a label.
MISROUTED_CAMPAIGN = "+4930555123"
CALLER_IDS = ("+4930111111", "+4930222222", "+4930333333")

# What Grafana substitutes: every campaign and caller ID, and short windows for a young TSDB.
TEMPLATE_VALUES = {
    "campaign": ".*",
    "caller_id": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


def substitute(expr: str) -> str:
    """Fill in Grafana's template variables; an unknown variable fails the test by KeyError."""
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: TEMPLATE_VALUES[m.group(1) or m.group(2)],
        expr,
    )


def dashboard_queries() -> dict[str, str]:
    """Every query of every panel, keyed by "panel title [refId]"."""
    board = json.loads(DASHBOARD.read_text())
    queries = {}

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                queries[f"{panel['title']} [{target['refId']}]"] = target["expr"]

    walk(board["panels"])
    return queries


def alert_expressions() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


DASHBOARD_QUERIES = dashboard_queries()
ALERT_EXPRESSIONS = alert_expressions()


async def generate_traffic(
    metrics: Metrics, instances: InstanceMetrics | None = None, *, tick: float = 0.1
) -> None:
    """Drive every series forever (until cancelled), a little on every tick."""
    rules = itertools.cycle(list(Rule))
    sources = itertools.cycle(COMPLAINT_SOURCES)
    causes = itertools.cycle(CARRIER_REJECTION_LABELS)
    reasons = itertools.cycle(list(RestReason))
    caller_ids = itertools.cycle(CALLER_IDS)
    latencies = itertools.cycle([0.002, 0.003, 0.001, 0.004, 0.08])  # p99 above the 50 ms alert
    metrics.ari_connected(False)
    metrics.set_callerid_states({"active": 5, "rested": 2, "retired": 1})
    for step in itertools.count():
        with metrics.in_flight():
            for campaign in (*CAMPAIGNS, MISROUTED_CAMPAIGN):
                metrics.decision("allow", None, campaign, next(latencies))
                metrics.decision("deny", next(rules), campaign, next(latencies))
                metrics.decision("deny", Rule.STORE_UNAVAILABLE, campaign, next(latencies))
                metrics.complaint(next(sources), campaign, caller_id=next(caller_ids))
                metrics.carrier_rejection(next(causes), campaign)
                metrics.callerid_rested(next(reasons), campaign)
                metrics.callerid_rested(RestReason.CARRIER_BLOCK_SUSPECTED, campaign)
                for outcome in Outcome:
                    metrics.call_outcome(outcome, campaign, caller_id=next(caller_ids))
            metrics.ungated_call()
            metrics.store_error()
            metrics.fail_open_decision()
            metrics.dialplan_misconfigured()
            for task in BACKGROUND_TASKS:
                metrics.background_error(task)
            if step % 10 == 0:
                metrics.ari_reconnect()
            for kind in ("StasisStart", "Dial", "ChannelStateChange", "ChannelDestroyed"):
                metrics.ari_event(kind)
            if instances is not None:
                # One instance of a broadcast group, alone and at odds with the others' profiles.
                instances.instances_alive(1)
                instances.profiles_mismatch(True)
                for result in CLAIM_RESULTS:
                    instances.claim(result)
                instances.takeover(2)
            await asyncio.sleep(tick)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def prometheus() -> AsyncIterator[RunningPrometheus]:
    if shutil.which("prometheus") is None:
        if os.environ.get("CI"):
            pytest.fail("the prometheus binary is missing; CI must install it (scripts/setup)")
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus)")
    registry = CollectorRegistry()
    metrics = Metrics(registry, per_callerid=True, build_version="0.0.0-test")
    runner = await serve_metrics(registry, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    instances = InstanceMetrics(
        registry, mode="broadcast", ready=lambda: False, background_error=metrics.background_error
    )
    traffic = asyncio.create_task(generate_traffic(metrics, instances))
    # Nothing listens here: a target that is down, so DialguardDown has something to report.
    dead_target = f"127.0.0.1:{free_port()}"
    try:
        async with running_prometheus(
            [f"{host}:{port}", dead_target], rule_files=[ALERTS]
        ) as running:
            yield running
    finally:
        traffic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await traffic
        await runner.cleanup()


@pytest.mark.parametrize("panel", DASHBOARD_QUERIES)
async def test_every_dashboard_query_returns_data(
    prometheus: RunningPrometheus, panel: str
) -> None:
    expr = DASHBOARD_QUERIES[panel]
    result = await prometheus.query(substitute(expr))
    assert result, f"no data for {substitute(expr)}"


@pytest.mark.parametrize("alert", ALERT_EXPRESSIONS)
async def test_every_alert_expression_returns_data_when_its_condition_holds(
    prometheus: RunningPrometheus, alert: str
) -> None:
    expr = ALERT_EXPRESSIONS[alert]
    assert "$" not in expr
    result = await prometheus.query(expr)
    assert result, f"alert expression returned nothing: {expr}"


async def test_prometheus_loads_every_alert_and_each_becomes_active(
    prometheus: RunningPrometheus,
) -> None:
    async def all_active() -> bool:
        rules = {r["name"]: r for r in await prometheus.rules() if r["type"] == "alerting"}
        assert set(rules) == set(ALERT_EXPRESSIONS)
        for rule in rules.values():
            assert rule["health"] in {"ok", "unknown"}, (rule["name"], rule.get("lastError"))
        return all(
            r["health"] == "ok" and r["state"] in {"pending", "firing"} for r in rules.values()
        )

    await wait_for(all_active, seconds=20, what="every alert to be pending or firing")


async def test_the_template_variables_find_their_values(prometheus: RunningPrometheus) -> None:
    campaigns = await prometheus.label_values("campaign", "dialguard_decisions_total")
    assert {*CAMPAIGNS, REDACTED_LABEL} <= set(campaigns)
    caller_ids = await prometheus.label_values("caller_id", "dialguard_callerid_calls_total")
    assert set(caller_ids) == set(CALLER_IDS)


async def test_rates_are_positive_where_traffic_flows(prometheus: RunningPrometheus) -> None:
    for expr in (
        'sum(rate(dialguard_decisions_total{verdict="deny"}[1m]))',
        "sum(rate(dialguard_complaints_total[1m]))",
        "sum(rate(dialguard_carrier_rejections_total[1m]))",
        "sum(rate(dialguard_call_outcomes_total[1m]))",
        "sum(rate(dialguard_decision_seconds_count[1m]))",
    ):
        (series,) = await prometheus.query(expr)
        assert sample_value(series) > 0, expr


async def test_no_label_but_caller_id_carries_a_phone_number(
    prometheus: RunningPrometheus,
) -> None:
    digits = re.compile(r"\d{7}")
    for series in await prometheus.series('{__name__=~"dialguard_.+"}'):
        for label, value in series.items():
            if label not in {"caller_id", "instance"}:
                assert not digits.search(value), (series["__name__"], label, value)
