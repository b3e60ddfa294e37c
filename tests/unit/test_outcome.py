"""What became of a call: its classification and the carrier-block signal."""

from __future__ import annotations

import pytest

from dialguard.policy.codes import CARRIER_REJECTION_LABELS, Outcome
from dialguard.policy.outcome import classify, is_carrier_rejection, rejection_label


@pytest.mark.parametrize("seconds", [0, 1, 29, 60, 3600])
def test_any_answered_time_is_answered_whatever_the_cause(seconds: int) -> None:
    assert classify(seconds, 16, None) is Outcome.ANSWERED
    # A conversation that ended with a rejection-looking code was still a conversation.
    assert classify(seconds, 21, 403) is Outcome.ANSWERED


def test_cause_21_is_a_carrier_rejection() -> None:
    assert classify(None, 21, None) is Outcome.CARRIER_REJECTED
    assert is_carrier_rejection(21, None)
    assert rejection_label(21, None) == "q850_21"


@pytest.mark.parametrize("sip_code", [403, 603, 607, 608])
def test_sip_rejections_with_cause_127_are_carrier_rejections(sip_code: int) -> None:
    # 607 and 608 map to Q.850 cause 127 (interworking): only the SIP code tells.
    assert classify(None, 127, sip_code) is Outcome.CARRIER_REJECTED
    assert is_carrier_rejection(127, sip_code)
    assert rejection_label(127, sip_code) == f"sip_{sip_code}"


def test_the_sip_code_names_the_label_when_both_signals_are_present() -> None:
    assert rejection_label(21, 603) == "sip_603"


def test_every_rejection_label_is_a_declared_label_value() -> None:
    labels = {rejection_label(21, None)} | {rejection_label(127, c) for c in (403, 603, 607, 608)}
    assert labels == set(CARRIER_REJECTION_LABELS)


@pytest.mark.parametrize(
    ("cause", "sip_code"),
    [(127, None), (16, None), (17, 486), (34, 503), (None, 404), (None, None)],
)
def test_other_causes_are_not_carrier_rejections(cause: int | None, sip_code: int | None) -> None:
    assert not is_carrier_rejection(cause, sip_code)
    assert rejection_label(cause, sip_code) is None


@pytest.mark.parametrize(
    ("cause", "sip_code", "outcome"),
    [
        (17, None, Outcome.BUSY),
        (None, 486, Outcome.BUSY),
        (None, 600, Outcome.BUSY),
        (18, None, Outcome.NO_ANSWER),
        (19, None, Outcome.NO_ANSWER),
        (20, None, Outcome.NO_ANSWER),
        (None, 408, Outcome.NO_ANSWER),
        (None, 480, Outcome.NO_ANSWER),
        (None, 487, Outcome.NO_ANSWER),
        (34, None, Outcome.CONGESTION),
        (38, None, Outcome.CONGESTION),
        (41, None, Outcome.CONGESTION),
        (42, None, Outcome.CONGESTION),
        (44, None, Outcome.CONGESTION),
        (47, None, Outcome.CONGESTION),
        (None, 503, Outcome.CONGESTION),
        (16, None, Outcome.FAILED),
        (1, 404, Outcome.FAILED),
        (127, None, Outcome.FAILED),
        (None, None, Outcome.FAILED),
    ],
)
def test_unanswered_calls_are_classified_by_cause_then_sip_code(
    cause: int | None, sip_code: int | None, outcome: Outcome
) -> None:
    assert classify(None, cause, sip_code) is outcome


def test_zero_answered_seconds_is_a_very_short_answer_not_a_failure() -> None:
    assert classify(0, 16, None) is Outcome.ANSWERED
    assert classify(None, 16, None) is Outcome.FAILED


def test_a_carrier_rejection_outranks_busy() -> None:
    assert classify(None, 17, 603) is Outcome.CARRIER_REJECTED
