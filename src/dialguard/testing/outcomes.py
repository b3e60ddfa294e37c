"""What the carrier does with a call the fake puts on the trunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dialguard.testing.causes import sip_to_cause

OutcomeKind = Literal["answered", "failed", "no_answer"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A scripted carrier answer. Build it with the class methods; durations are seconds.

    `cause` is the Q.850 cause of the trunk channel's ChannelDestroyed, `tech_cause` the SIP
    status Asterisk reports with it (None when the far end sent no SIP failure).
    """

    kind: OutcomeKind
    cause: int = 16
    tech_cause: int | None = None
    ring_seconds: float = 0.0
    talk_seconds: float = 0.0

    @classmethod
    def answered(cls, seconds: float = 0.05, *, ring_seconds: float = 0.0) -> Outcome:
        """The callee answers and the far end hangs up `seconds` later (cause 16)."""
        return cls("answered", 16, None, ring_seconds, seconds)

    @classmethod
    def busy(cls) -> Outcome:
        """SIP 486 Busy Here: cause 17, Dial BUSY."""
        return cls("failed", 17, 486)

    @classmethod
    def congestion(cls) -> Outcome:
        """SIP 503 Service Unavailable: cause 34, Dial CONGESTION."""
        return cls("failed", 34, 503)

    @classmethod
    def rejected(cls) -> Outcome:
        """A carrier reject signalled only as Q.850 cause 21 (no SIP status)."""
        return cls("failed", 21, None)

    @classmethod
    def sip(cls, code: int, *, ring_seconds: float = 0.0) -> Outcome:
        """A SIP final failure: 403/603 -> cause 21, 607/608 -> cause 127, tech_cause=code."""
        return cls("failed", sip_to_cause(code), code, ring_seconds)

    @classmethod
    def no_answer(cls, ring_seconds: float = 0.05) -> Outcome:
        """The callee rings until Dial gives up: Dial NOANSWER, trunk ends with cause 19."""
        return cls("no_answer", 19, None, ring_seconds)
