"""Test support: a faithful fake Asterisk ARI server (tests, benchmarks, `dialguard demo`)."""

from __future__ import annotations

from dialguard.testing.channels import Call, FakeChannel
from dialguard.testing.fake_asterisk import FakeAsterisk
from dialguard.testing.outcomes import Outcome
from dialguard.testing.records import ProtocolViolation, RecordedRequest, SentEvent

__all__ = [
    "Call",
    "FakeAsterisk",
    "FakeChannel",
    "Outcome",
    "ProtocolViolation",
    "RecordedRequest",
    "SentEvent",
]
