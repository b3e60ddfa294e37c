"""What became of a call, from its answered time, Q.850 cause and SIP code."""

from __future__ import annotations

from dialguard.policy.codes import (
    CARRIER_REJECT_CAUSE,
    CARRIER_REJECT_SIP_CODES,
    Outcome,
)

_BUSY = frozenset({17})
_NO_ANSWER = frozenset({18, 19, 20})
_CONGESTION = frozenset({34, 38, 41, 42, 44, 47})


def is_carrier_rejection(cause: int | None, sip_code: int | None) -> bool:
    """Cause 21 or SIP 403/603/607/608; 607 and 608 map to cause 127, so only the SIP code tells."""
    return cause == CARRIER_REJECT_CAUSE or sip_code in CARRIER_REJECT_SIP_CODES


def classify(answered_seconds: int | None, cause: int | None, sip_code: int | None) -> Outcome:
    """``answered_seconds`` is ``None`` for a call never answered (0 is a very short answer)."""
    if answered_seconds is not None:
        return Outcome.ANSWERED
    if is_carrier_rejection(cause, sip_code):
        return Outcome.CARRIER_REJECTED
    if cause in _BUSY or sip_code in (486, 600):
        return Outcome.BUSY
    if cause in _NO_ANSWER or sip_code in (408, 480, 487):
        return Outcome.NO_ANSWER
    if cause in _CONGESTION or sip_code in (503,):
        return Outcome.CONGESTION
    return Outcome.FAILED


def rejection_label(cause: int | None, sip_code: int | None) -> str | None:
    """The ``cause`` label of dialguard_carrier_rejections_total, or ``None``."""
    if sip_code in CARRIER_REJECT_SIP_CODES:
        return f"sip_{sip_code}"
    if cause == CARRIER_REJECT_CAUSE:
        return "q850_21"
    return None
