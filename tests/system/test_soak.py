"""The soak with faults (bench/soak.py) for two minutes, with the same targets as the long run.

Two `dialguard serve` processes share a dedicated PostgreSQL and the fake Asterisk while their
websockets are cut, the database restarts and stalls, one instance is SIGKILLed and restarted,
and 10,000 complaints and 1,000,000 blacklist entries are imported. The test first checks that
every fault really happened and hit calls, then holds the run to the targets.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dialguard_bench_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def report() -> Any:
    soak = load_soak()
    result = await soak.run_soak(soak.SoakOptions(minutes=2.0, rate=10.0))
    print(soak.markdown(result))
    return result


def fault(report: dict[str, Any], prefix: str) -> dict[str, Any]:
    found = [f for f in report["faults"] if f["fault"].startswith(prefix)]
    assert len(found) == 1, f"one {prefix!r} fault in {[f['fault'] for f in report['faults']]}"
    return found[0]


@pytest.mark.asyncio(loop_scope="module")
async def test_every_fault_happened_and_hit_calls(report: dict[str, Any]) -> None:
    for f in report["faults"]:
        assert f["error"] is None, f
        assert f["calls"] > 0, f"no call was offered during {f['fault']}"
    for app in ("dialguard-a", "dialguard-b"):
        cut = fault(report, f"websocket cut ({app})")
        assert cut["detail"]["reconnected_s"] < 10
        # The call parked as the socket died was decided by the reconciliation, in time.
        assert 0 < cut["detail"]["parked_call_decided_ms"] < 5000
    assert fault(report, "PostgreSQL restart")["detail"]["stopped_s"] > 0
    stall = fault(report, "database stall")
    assert stall["detail"]["processes"] > 1  # the postmaster and its backends
    assert stall["lasted_s"] >= 10
    # The stall was felt: closed mode denied, open mode spooled.
    assert stall["verdicts"].get("store_unavailable", 0) > 0
    assert report["fail_open_allowed_rows"] > 0
    kill = fault(report, "SIGKILL and restart (dialguard-b)")
    assert kill["detail"]["restart_s"] > 0
    assert fault(report, "complaint import")["detail"]["imported"] == 10_000
    assert fault(report, "blacklist import")["detail"]["imported"] == 1_000_000
    # Both imports reached the traffic: later calls to those numbers were denied.
    assert report["verdicts"].get("denied: blacklisted", 0) > 0
    assert report["all_calls_ended"]


@pytest.mark.asyncio(loop_scope="module")
async def test_every_call_is_answered_within_the_deadline(report: dict[str, Any]) -> None:
    assert report["offered"] > 1000
    assert report["answered_in_time"] == report["offered"], report["late_ms"]


@pytest.mark.asyncio(loop_scope="module")
async def test_no_call_is_allowed_twice(report: dict[str, Any]) -> None:
    assert report["double_allows"] == {
        "destination_interval": 0,
        "callerid_rate": 0,
        "callerid_concurrency": 0,
        "blacklisted": 0,
    }
    assert report["channels_with_two_allowed"] == 0, report["two_allowed_sample"]


@pytest.mark.asyncio(loop_scope="module")
async def test_nothing_is_phantom_or_lost(report: dict[str, Any]) -> None:
    assert report["phantom_calls"] == 0, (report["phantom_causes"], report["phantom_sample"])
    assert report["lost_outcomes"] == 0
    assert report["lost_decisions"] == 0, report["lost_decision_sample"]
    assert report["lost_spool_entries"] == 0, report["spool_lines_left"]
