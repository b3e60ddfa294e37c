"""The soak with faults on a real Asterisk (bench/soak_real.py): 90 s in fail mode closed, 60 s
in fail mode open, and 60 s with two instances in broadcast mode.

`dialguard serve` gates the shipped dialplan of Asterisk 22 with a sipp carrier while its ARI
link is cut with a call waiting in Stasis, the database stalls and restarts, and dialguard is
SIGKILLed with a call waiting and started again. In fail mode open the stalls let calls through
unchecked, and their decisions and outcomes must come back from the spool. Each run first
checks that every fault happened and that the calls waiting through them were decided, then
holds the run to the soak's checks: no late verdict, no call on the trunk without an allowed
decision, no double allow, no allowed decision without an outcome, no outcome that
contradicts the carrier, no spool line left.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

from dialguard.testing.real_asterisk import can_use_sip, skip_reason

BENCH = Path(__file__).resolve().parents[2] / "bench"
_reason = skip_reason() or (None if can_use_sip() else "the carrier needs root, `ip` and sipp")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asterisk,
    pytest.mark.skipif(_reason is not None, reason=_reason or ""),
]


def load() -> ModuleType:
    sys.path.append(str(BENCH))  # its sibling modules (soak, gate_real)
    spec = importlib.util.spec_from_file_location(
        "dialguard_bench_soak_real", BENCH / "soak_real.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# Each run: its options beyond `--rate 8 --fault-every 12`.
RUNS = {
    "closed": ["--minutes", "1.5"],
    "open": ["--minutes", "1", "--fail-mode", "open"],
    "broadcast": ["--minutes", "1", "--instances", "2"],
}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=list(RUNS))
async def report(request: pytest.FixtureRequest) -> Any:
    soak = load()
    result = await soak.soak_real(
        soak.options(["--rate", "8", "--fault-every", "12", *RUNS[request.param]])
    )
    print(soak.markdown(result))
    return result


@pytest.mark.asyncio(loop_scope="module")
async def test_every_fault_happened_and_its_waiting_call_was_decided(
    report: dict[str, Any],
) -> None:
    names = [f["name"] for f in report["faults"]]
    assert {"cut", "stall", "kill", "restart"} <= set(names), names
    for f in report["faults"]:
        assert f["error"] is None, f
        if f["name"] == "cut":
            # Its StasisStart was lost with the link: the reconciliation (or, in broadcast
            # mode, another instance) decided it, in time.
            assert f["probe_decided_s"] is not None and f["probe_decided_s"] < 5, f
        if f["name"] == "kill":
            assert f["restart_s"] > 0 and f["probe_decided_s"] is not None, f
    if report["fail_mode"] == "closed":
        # The stall and the kill were felt: calls were denied, or failed closed.
        assert report["denied"] + report["failed_closed"] > 0
        assert report["allowed_fail_open"] == 0
    else:
        # The stalls let calls through unchecked, and their decisions came back from the spool.
        assert report["allowed_fail_open"] > 0
    assert report["allowed"] > report["offered"] / 3
    assert report["twins"] > 0  # pairs offered at once, of which one at most may be allowed


@pytest.mark.asyncio(loop_scope="module")
async def test_no_call_is_late_ungated_allowed_twice_or_left_without_its_outcome(
    report: dict[str, Any],
) -> None:
    assert report["offered"] > 400
    assert report["checks"] == {
        "late": 0,
        "ungated": 0,
        "allowed_twice": 0,
        "phantoms": 0,
        "wrong_outcomes": 0,
        "double_allows": 0,
        "calls_left_up": 0,
        "fault_errors": 0,
        "spool_left": 0,
    }, report["failures"]
