"""Which ARI requests place calls, and what they ask for, read the way Asterisk reads them.

ARI takes every parameter from the query string, from a form body, or from a JSON body
(res/ari/res_ari.c and the generated res_ari_channels.c):

- a form body (``application/x-www-form-urlencoded``) is merged with the query, and a
  parameter given in both keeps the query's value (the query comes last and the last wins);
- a JSON body is read only with ``Content-Type: application/json``; its keys override the
  query (``*_parse_body`` runs after the query is read), and ``variables`` is its object of
  channel variables, all strings;
- a body Asterisk cannot read makes it answer 400 and place nothing.

What dialguard decides on is what Asterisk will act on, so the rules here follow that order.
Pure: no I/O.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus


class Kind(enum.Enum):
    ORIGINATE = "originate"  # POST /channels, POST /channels/{channelId}
    CREATE = "create"  # POST /channels/create: a channel that calls once dialed
    DIAL = "dial"  # POST /channels/{channelId}/dial


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    channel_id: str | None  # from the path


# Literal segments below /channels that Asterisk routes before {channelId}.
_LITERAL_CHANNEL_ROUTES = frozenset({"create", "externalMedia"})


def ari_segments(raw_path: str) -> list[str] | None:
    """The path segments Asterisk routes a raw path below /ari on; None for no resource.

    As res_ari.c does: a trailing slash only earns a redirect; the path is split on "/" and
    read up to the first empty segment (``channels//x`` is ``channels``); each segment is then
    percent-decoded on its own (``a%2Fb`` is the one segment ``a/b``, ``+`` a space). Reading
    the path the way Asterisk will is what keeps an origination from passing undecided under
    another spelling.
    """
    if raw_path.endswith("/"):
        return None
    segments: list[str] = []
    for segment in raw_path.removeprefix("/").split("/"):
        if not segment:
            break
        segments.append(unquote_plus(segment, errors="replace"))
    return segments


def route_of(method: str, raw_path: str) -> Route | None:
    """The origination a request is, from its raw path below /ari; None for the rest."""
    if method.upper() != "POST":  # Asterisk reads the method case-insensitively
        return None
    segments = ari_segments(raw_path)
    if not segments or segments[0] != "channels":
        return None
    match segments[1:]:
        case []:
            return Route(Kind.ORIGINATE, None)
        case ["create"]:
            return Route(Kind.CREATE, None)
        case [channel_id] if channel_id and channel_id not in _LITERAL_CHANNEL_ROUTES:
            return Route(Kind.ORIGINATE, channel_id)
        case [channel_id, "dial"] if channel_id and channel_id not in _LITERAL_CHANNEL_ROUTES:
            return Route(Kind.DIAL, channel_id)
        case _:
            return None


@dataclass(frozen=True, slots=True)
class Origination:
    """What one origination request asks Asterisk for."""

    kind: Kind
    endpoint: str | None
    caller_number: str | None  # the number the carrier would be shown; None when not given
    channel_id: str | None  # the path's, else the channelId parameter
    dial_caller: str | None  # /dial's `caller`: the channel whose caller ID is presented
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A body Asterisk would refuse with 400; `message` is Asterisk's text for it.

    Refused by the proxy itself rather than forwarded: a body dialguard cannot read is never
    passed on undecided, whatever another parser might make of it.
    """

    message: str


def read_origination(
    route: Route, query: Iterable[tuple[str, str]], content_type: str, body: bytes
) -> Origination | Unreadable:
    """The origination as Asterisk will see it, or why Asterisk would refuse its body."""
    read = _read_parameters(query, content_type, body)
    if isinstance(read, Unreadable):
        return read
    params, variables = read
    caller: str | None = None
    if route.kind is Kind.ORIGINATE:
        caller = caller_number(params.get("callerId") or "")
    # Asterisk sets the originate's callerId first, then the variables, so a caller-ID function
    # among them has the last word (ari_channels_handle_originate_with_id).
    caller = _caller_from_variables(variables, caller)
    return Origination(
        kind=route.kind,
        endpoint=params.get("endpoint"),
        caller_number=caller,
        channel_id=route.channel_id or params.get("channelId") or None,
        dial_caller=params.get("caller") or None,
        variables=variables,
    )


def _read_parameters(
    query: Iterable[tuple[str, str]], content_type: str, body: bytes
) -> tuple[dict[str, str | None], dict[str, str]] | Unreadable:
    params: dict[str, str | None] = {}
    variables: dict[str, str] = {}
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/x-www-form-urlencoded" and body:
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        params.update(query)
        return params, variables
    params.update(query)
    if mime != "application/json" or not body.strip():
        return params, variables
    try:
        document = json.loads(body)
    except ValueError:
        return Unreadable("Error parsing request body")
    if not isinstance(document, dict):
        return params, variables  # not an object: Asterisk finds no parameter in it
    for key, value in document.items():
        if key != "variables":
            # A non-string value reads as no value at all (ast_json_string_get gives NULL).
            params[key] = value if isinstance(value, str) else None
    found = document.get("variables")
    if found is not None:
        if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
            return Unreadable("Only string values in the 'variables' object allowed")
        variables = dict(found)
    return params, variables


_SHRINKABLE = re.compile(r"[0-9*#+()\-. ]+")
_ANGLED = re.compile(r"<([^>]*)>")
_SHRINK = re.compile(r"[()\-. ]")


def caller_number(text: str) -> str | None:
    """The number in an ARI caller ID, as ast_callerid_parse() finds it.

    ``"Dialer" <4930123456>`` and ``<4930123456>`` give the number in angle brackets; a bare
    value is a number only when it looks like one (``+49 30 123456``), otherwise it is a name
    and there is no number. Separators Asterisk strips (``()-. ``) are removed.
    """
    text = text.strip()
    angled = _ANGLED.search(text)
    if angled is not None:
        number = angled.group(1).strip()
    else:
        number = text.strip('"').strip()
        if not _SHRINKABLE.fullmatch(number):
            return None
    if _SHRINKABLE.fullmatch(number):
        number = _SHRINK.sub("", number)
    return number or None


_NUMBER_FUNCTIONS = frozenset(
    {"CALLERID(NUM)", "CALLERID(NUMBER)", "CONNECTEDLINE(NUM)", "CONNECTEDLINE(NUMBER)"}
)
_ALL_FUNCTIONS = frozenset({"CALLERID(ALL)", "CONNECTEDLINE(ALL)"})


def _caller_from_variables(variables: Mapping[str, str], caller: str | None) -> str | None:
    """Caller-ID functions set through ``variables``, applied in order: the last one wins.

    CONNECTEDLINE is what an outgoing channel presents; CALLERID counts as well, so that a
    number set either way is the one decided on.
    """
    for name, value in variables.items():
        upper = name.upper()
        if upper in _NUMBER_FUNCTIONS:
            caller = value.strip() or None
        elif upper in _ALL_FUNCTIONS:
            caller = caller_number(value)
    return caller


def trunk_destination(endpoint: str | None, patterns: Iterable[re.Pattern[str]]) -> str | None:
    """The destination when `endpoint` is on a trunk, else None ("" when the group is empty).

    A pattern matches anywhere in the endpoint (``search``): a pattern written too loosely
    gates more, never less.
    """
    if not endpoint:
        return None
    for pattern in patterns:
        found = pattern.search(endpoint)
        if found is not None:
            return found.group("destination") or ""
    return None


def campaign_of(variables: Mapping[str, str], name: str) -> str | None:
    """The campaign from the channel variable `name`, set plainly or as ``_NAME``/``__NAME``."""
    for key in (name, f"_{name}", f"__{name}"):
        value = variables.get(key)
        if value:
            return value
    return None


def response_channel_id(body: bytes) -> str | None:
    """The ``id`` of the channel snapshot Asterisk answered with, if it is one."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        return None
    found = document.get("id") if isinstance(document, dict) else None
    return found if isinstance(found, str) and found else None
