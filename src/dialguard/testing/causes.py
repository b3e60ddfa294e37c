"""Hangup causes as Asterisk names and maps them (main/channel.c, chan_pjsip, ARI hangup)."""

from __future__ import annotations

# Q.850 cause -> the text Asterisk puts in ChannelDestroyed.cause_txt.
CAUSE_TEXT: dict[int, str] = {
    0: "Unknown",
    1: "Unallocated (unassigned) number",
    3: "No route to destination",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    21: "Call Rejected",
    22: "Number changed",
    26: "Answered elsewhere",
    27: "Destination out of order",
    28: "Invalid number format",
    29: "Facility rejected",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    41: "Temporary failure",
    58: "Bearer capability not available",
    102: "Recovery on timer expiry",
    127: "Interworking, unspecified",
}

# DELETE /channels/{id}?reason=... -> Q.850 cause (ARI's hangup reasons).
HANGUP_REASONS: dict[str, int] = {
    "normal": 16,
    "busy": 17,
    "congestion": 34,
    "no_answer": 19,
    "timeout": 18,
    "rejected": 21,
    "unallocated": 1,
    "normal_unspecified": 31,
    "number_incomplete": 28,
    "codec_mismatch": 58,
    "interworking": 127,
    "failure": 38,
    "answered_elsewhere": 26,
}

# SIP final response -> Q.850 cause, as chan_pjsip maps them. 607 and 608 are not listed and
# fall into the 6xx default (127): only tech_cause tells a carrier's spam verdict apart.
_SIP_TO_CAUSE: dict[int, int] = {
    401: 21,
    403: 21,
    404: 1,
    407: 21,
    408: 18,
    410: 22,
    480: 19,
    484: 28,
    486: 17,
    500: 38,
    502: 27,
    503: 34,
    504: 102,
    600: 17,
    603: 21,
    604: 1,
    606: 58,
}

# Q.850 cause -> the SIP answer PJSIP sends to an unanswered inbound call hung up with it.
_CAUSE_TO_SIP: dict[int, int] = {1: 404, 17: 486, 19: 480, 21: 403, 34: 503, 127: 500}


def cause_text(cause: int) -> str:
    return CAUSE_TEXT.get(cause, "Unknown")


def sip_to_cause(code: int) -> int:
    if code in _SIP_TO_CAUSE:
        return _SIP_TO_CAUSE[code]
    if 500 <= code < 600:
        return 34
    return 127


def cause_to_sip(cause: int) -> int | None:
    return _CAUSE_TO_SIP.get(cause)


def dial_status_for(cause: int) -> str:
    """The dialstatus of the Dial event when a peer ends before answering with `cause`.

    Asterisk reports anything but busy and congestion as NOANSWER in the event (while the
    DIALSTATUS variable may say CHANUNAVAIL): the allow-carrier-rejected recording shows it.
    """
    if cause == 17:
        return "BUSY"
    if cause == 34:
        return "CONGESTION"
    return "NOANSWER"


def dialstatus_variable_for(cause: int) -> str:
    """The DIALSTATUS channel variable after a failed Dial with this peer cause."""
    if cause == 17:
        return "BUSY"
    if cause == 34:
        return "CONGESTION"
    if cause in (18, 19):
        return "NOANSWER"
    return "CHANUNAVAIL"
