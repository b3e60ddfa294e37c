"""promtool accepts the Prometheus configuration and the alert rules, and the rule tests pass.

Skipped only on a developer machine without promtool; in CI (CI set) a missing promtool fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing; CI must install it (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def run(promtool: str, *args: str) -> str:
    # From the prometheus folder, as in the container: rule_files resolve relative to the config
    # (check config) or to the test file (test rules), and both live there.
    done = subprocess.run(
        [promtool, *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_the_prometheus_config_is_valid_and_finds_its_rule_files(promtool: str) -> None:
    output = run(promtool, "check", "config", "prometheus.yml")
    assert "1 rule files found" in output


def test_the_alert_rules_are_valid(promtool: str) -> None:
    output = run(promtool, "check", "rules", "alerts.yml")
    assert "SUCCESS" in output


def test_every_alert_is_covered_by_a_rule_test() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == alerts, f"alerts never shown firing: {alerts - firing}"
    assert quiet == alerts, f"alerts never shown quiet: {alerts - quiet}"


def test_the_alert_rule_tests_pass(promtool: str) -> None:
    output = run(promtool, "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in output
