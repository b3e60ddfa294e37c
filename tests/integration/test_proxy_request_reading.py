"""How the ARI proxy reads a request, as Asterisk reads it. Pure functions: no sockets here."""

from __future__ import annotations

import json
import re

import pytest

from dialguard.proxy.auth import without_api_key
from dialguard.proxy.created import CreatedChannels
from dialguard.proxy.origination import (
    Kind,
    Origination,
    Route,
    Unreadable,
    caller_number,
    campaign_of,
    read_origination,
    response_channel_id,
    route_of,
    trunk_destination,
)

ORIGINATE = Route(Kind.ORIGINATE, None)
JSON = "application/json"
CARRIER = (re.compile(r"^PJSIP/(?P<destination>[^@]+)@carrier$"),)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/channels", Route(Kind.ORIGINATE, None)),
        ("POST", "/channels/abc.1", Route(Kind.ORIGINATE, "abc.1")),
        ("POST", "/channels/create", Route(Kind.CREATE, None)),
        ("POST", "/channels/abc.1/dial", Route(Kind.DIAL, "abc.1")),
        ("POST", "/channels/externalMedia", None),
        ("POST", "/channels/abc.1/continue", None),
        ("POST", "/channels/", None),  # Asterisk redirects a trailing slash; nothing placed
        # Other spellings Asterisk reads as an origination all the same:
        ("POST", "/channels//anything", Route(Kind.ORIGINATE, None)),
        ("POST", "/%63hannels", Route(Kind.ORIGINATE, None)),
        ("POST", "/channels/a%2Fb/dial", Route(Kind.DIAL, "a/b")),
        ("POST", "/channels/..", Route(Kind.ORIGINATE, "..")),
        ("POST", "/channels/a+b", Route(Kind.ORIGINATE, "a b")),
        ("POST", "//channels", None),
        ("GET", "/channels", None),
        ("DELETE", "/channels/abc.1", None),
        ("POST", "/bridges", None),
    ],
)
def test_only_the_four_origination_routes_are_gated(
    method: str, path: str, expected: Route | None
) -> None:
    assert route_of(method, path) == expected


def test_query_parameters_are_read_and_the_last_repeat_wins() -> None:
    found = read_origination(
        ORIGINATE,
        [("endpoint", "PJSIP/1@carrier"), ("callerId", "111"), ("callerId", '"D" <222>')],
        "",
        b"",
    )
    assert isinstance(found, Origination)
    assert (found.endpoint, found.caller_number) == ("PJSIP/1@carrier", "222")


def test_a_json_body_overrides_the_query_and_brings_the_variables() -> None:
    body = json.dumps(
        {
            "endpoint": "PJSIP/2@carrier",
            "channelId": "c-1",
            "variables": {"CAMPAIGN": "spring"},
        }
    ).encode()
    found = read_origination(
        ORIGINATE, [("endpoint", "PJSIP/1@carrier")], "application/json; charset=utf-8", body
    )
    assert isinstance(found, Origination)
    assert (found.endpoint, found.channel_id) == ("PJSIP/2@carrier", "c-1")
    assert found.variables == {"CAMPAIGN": "spring"}


def test_a_json_body_without_the_json_content_type_is_not_read() -> None:
    body = json.dumps({"endpoint": "PJSIP/2@carrier"}).encode()
    found = read_origination(ORIGINATE, [("endpoint", "PJSIP/1@carrier")], "text/plain", body)
    assert isinstance(found, Origination) and found.endpoint == "PJSIP/1@carrier"


def test_a_form_body_is_merged_and_the_query_wins_over_it() -> None:
    found = read_origination(
        ORIGINATE,
        [("callerId", "333")],
        "application/x-www-form-urlencoded",
        b"endpoint=PJSIP%2F4%40carrier&callerId=444",
    )
    assert isinstance(found, Origination)
    assert (found.endpoint, found.caller_number) == ("PJSIP/4@carrier", "333")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "Error parsing request body"),
        (b'{"endpoint": "PJSIP/1@carrier"} trailing', "Error parsing request body"),
        (b'{"variables": {"A": 1}}', "Only string values in the 'variables' object allowed"),
        (b'{"variables": ["A"]}', "Only string values in the 'variables' object allowed"),
    ],
)
def test_a_body_asterisk_would_refuse_is_refused_with_asterisks_message(
    body: bytes, message: str
) -> None:
    found = read_origination(ORIGINATE, [("endpoint", "PJSIP/1@carrier")], JSON, body)
    assert found == Unreadable(message)


def test_a_json_value_of_the_wrong_type_reads_as_no_value_like_asterisk() -> None:
    found = read_origination(ORIGINATE, [("endpoint", "PJSIP/1@carrier")], JSON, b'{"endpoint": 5}')
    assert isinstance(found, Origination) and found.endpoint is None


def test_a_json_body_that_is_not_an_object_leaves_the_query_as_it_is() -> None:
    found = read_origination(ORIGINATE, [("endpoint", "PJSIP/1@carrier")], JSON, b"[1, 2]")
    assert isinstance(found, Origination) and found.endpoint == "PJSIP/1@carrier"


def test_caller_id_functions_in_the_variables_have_the_last_word() -> None:
    body = json.dumps(
        {"variables": {"CALLERID(num)": "555", "CONNECTEDLINE(all)": '"X" <666>'}}
    ).encode()
    found = read_origination(ORIGINATE, [("callerId", "444")], JSON, body)
    assert isinstance(found, Origination) and found.caller_number == "666"


def test_dial_reads_its_channel_from_the_path_and_its_caller_channel() -> None:
    found = read_origination(Route(Kind.DIAL, "c-9"), [("caller", "agent-1")], "", b"")
    assert isinstance(found, Origination)
    assert (found.kind, found.channel_id, found.dial_caller) == (Kind.DIAL, "c-9", "agent-1")


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ('"Dialer" <4930123456>', "4930123456"),
        ("Dialer <+4930123456>", "+4930123456"),
        ("<4930123456>", "4930123456"),
        ("4930123456", "4930123456"),
        ("+1 (212) 555-0100", "+12125550100"),
        ("Dialer", None),  # a name only: no number is presented
        ("", None),
        ('"Dialer" <>', None),
    ],
)
def test_caller_number_is_found_as_asterisk_parses_a_caller_id(
    text: str, number: str | None
) -> None:
    assert caller_number(text) == number


@pytest.mark.parametrize(
    ("endpoint", "destination"),
    [
        ("PJSIP/2122641234@carrier", "2122641234"),
        ("PJSIP/+12122641234@carrier", "+12122641234"),
        ("PJSIP/2122641234@other", None),
        ("Local/2122641234@dialguard-out", None),
        ("PJSIP/carrier", None),
        (None, None),
    ],
)
def test_trunk_destination_comes_from_the_configured_pattern(
    endpoint: str | None, destination: str | None
) -> None:
    assert trunk_destination(endpoint, CARRIER) == destination


def test_a_loose_trunk_pattern_matches_anywhere_so_it_gates_more_not_less() -> None:
    loose = (re.compile(r"PJSIP/(?P<destination>\d+)@carrier"),)
    assert trunk_destination("PJSIP/2122641234@carrier/sip:x", loose) == "2122641234"


def test_campaign_comes_from_the_variable_with_or_without_inheritance_marks() -> None:
    assert campaign_of({"CAMPAIGN": "a"}, "CAMPAIGN") == "a"
    assert campaign_of({"__CAMPAIGN": "b"}, "CAMPAIGN") == "b"
    assert campaign_of({"CAMPAIGN": ""}, "CAMPAIGN") is None
    assert campaign_of({}, "CAMPAIGN") is None


def test_the_new_channel_id_is_read_from_asterisks_answer() -> None:
    assert response_channel_id(b'{"id": "1795877288.2", "name": "PJSIP/carrier-1"}') == (
        "1795877288.2"
    )
    assert response_channel_id(b'{"error": "Allocation failed"}') is None
    assert response_channel_id(b"not json") is None


def test_api_key_is_taken_out_of_the_query_and_every_other_byte_kept() -> None:
    assert without_api_key("app=a%20b&api_key=u:p&subscribeAll=true") == (
        "app=a%20b&subscribeAll=true"
    )
    assert without_api_key("API_KEY=u:p") == ""
    assert without_api_key("x=%2F") == "x=%2F"


def test_created_channels_are_forgotten_after_their_time_and_beyond_their_number() -> None:
    now = [0.0]
    created = CreatedChannels(max_entries=2, max_age=10.0, clock=lambda: now[0])
    created.remember("a", "1", None, None)
    created.remember("b", "2", None, None)
    created.remember("c", "3", None, None)
    assert created.get("a") is None and len(created) == 2
    now[0] = 11.0
    assert created.get("b") is None
