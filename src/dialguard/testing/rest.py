"""REST operations of the fake, keyed by the Swagger nickname, answering as Asterisk 22 does.

Status codes and messages come from res/ari/resource_*.c and the recordings (note the 500
`{"error": "Allocation failed"}`, the only body keyed "error").
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from dialguard.testing.apps import ASTERISK_ID, EVENT_SOURCE_SCHEMES, App
from dialguard.testing.causes import HANGUP_REASONS
from dialguard.testing.channels import FakeChannel, ari_now, parse_caller_id
from dialguard.testing.pbx import LabelNotFound, Pbx

Reply = tuple[int, Any]
Handler = Callable[[Pbx, dict[str, str], dict[str, Any]], Awaitable[Reply]]

# Violations of these (operation, parameter) pairs are answered by the handler itself, with the
# message Asterisk gives, instead of the validator's generic 400.
SELF_CHECKED: frozenset[tuple[str, str]] = frozenset(
    {
        ("originate", "endpoint"),
        ("originateWithId", "endpoint"),
        ("hangup", "reason"),
        ("setChannelVar", "variable"),
        ("subscribe", "eventSource"),
    }
)

_CREATED_TIMEOUT = 5.0


def _error(status: int, message: str) -> Reply:
    return status, {"message": message}


_CHANNEL_NOT_FOUND = _error(404, "Channel not found")
_NOT_IN_STASIS = _error(409, "Channel not in Stasis application")
_APP_NOT_FOUND = _error(404, "Application not found")
_ALLOCATION_FAILED: Reply = (500, {"error": "Allocation failed"})
_NO_CONTENT: Reply = (204, None)


def _control(pbx: Pbx, channel_id: str) -> FakeChannel | Reply:
    """find_control(): the channel if it is in Stasis, else Asterisk's 404 or 409."""
    ch = pbx.channels.get(channel_id)
    if ch is None:
        return _CHANNEL_NOT_FOUND
    if ch.stasis_app is None:
        return _NOT_IN_STASIS
    return ch


# -- channels ---------------------------------------------------------------------------------


async def list_channels(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    return 200, [pbx.snapshot(ch) for ch in pbx.channels.values()]


async def get_channel(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    ch = pbx.channels.get(path["channelId"])
    return _CHANNEL_NOT_FOUND if ch is None else (200, pbx.snapshot(ch))


async def originate(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    if _requested_id(path, params) in pbx.channels:
        return _error(409, "Channel with given unique ID already exists")
    endpoint = str(params.get("endpoint") or "")
    if not endpoint:
        return _error(400, "Endpoint must be specified")
    tech, _, device = endpoint.partition("/")
    if not tech or not device:
        return _error(400, "Invalid endpoint specified")
    app = params.get("app")
    extension = params.get("extension")
    if not app and not extension:
        return _error(400, "Application or extension must be specified")
    label = params.get("label")
    if label and not re.fullmatch(r"-?\d+", str(label)):
        # The fake models no dialplan besides the outbound context.
        return _error(404, "Requested label can not be found")
    caller_name, caller_number = parse_caller_id(str(params.get("callerId") or ""))
    timeout = int(params.get("timeout", 30))
    variables = params.get("variables") or {}
    if tech == "Local":
        number, _, context = device.partition("@")
        if context != pbx.config.outbound_context or not number.isdigit():
            return _ALLOCATION_FAILED
        call = pbx.start_outbound(
            number,
            caller_number,
            caller_name=caller_name,
            via="local",
            outcome=None,
            variables=dict(variables),
            stasis_args=None,
            originate_timeout=float(timeout) if timeout > 0 else None,
            originate_context=str(params.get("context") or "default"),
            originate_exten=str(extension) if extension else None,
        )
        await asyncio.wait_for(call.created.wait(), _CREATED_TIMEOUT)
        assert call.originated is not None
        return 200, pbx.snapshot(call.originated)
    trunk = pbx.trunk_for(endpoint) if tech == "PJSIP" else None
    if trunk is None:
        return _ALLOCATION_FAILED
    app_args = tuple(str(params["appArgs"]).split(",")) if params.get("appArgs") else ()
    call = pbx.start_direct(
        device.split("@", 1)[0],
        caller_number,
        caller_name=caller_name,
        endpoint=trunk,
        outcome=None,
        app=str(app) if app else None,
        app_args=app_args,
        context=str(params.get("context") or "default"),
        exten=str(extension) if extension else "s",
        channel_id=_requested_id(path, params),
    )
    await asyncio.wait_for(call.created.wait(), _CREATED_TIMEOUT)
    assert call.trunk is not None
    return 200, pbx.snapshot(call.trunk)


async def originate_with_id(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    return await originate(pbx, path, params)


def _requested_id(path: dict[str, str], params: dict[str, Any]) -> str | None:
    """The unique id asked for: the path's channelId, else the channelId parameter."""
    value = path.get("channelId") or params.get("channelId")
    return str(value) if value else None


async def hangup(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    ch = pbx.channels.get(path["channelId"])
    if ch is None:
        return _CHANNEL_NOT_FOUND
    reason, reason_code = params.get("reason"), params.get("reason_code")
    if reason and reason_code:
        return _error(400, "The reason and reason_code can't both be specified")
    if reason_code:
        if not re.fullmatch(r"\d+", str(reason_code)):
            return _error(400, "Invalid reason_code for hangup provided")
        cause = int(reason_code)
    elif reason:
        if reason not in HANGUP_REASONS:
            return _error(400, "Invalid reason for hangup reason provided")
        cause = HANGUP_REASONS[str(reason)]
    else:
        cause = 16
    await pbx.hangup(ch, cause)
    return _NO_CONTENT


async def continue_in_dialplan(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    found = _control(pbx, path["channelId"])
    if not isinstance(found, FakeChannel):
        return found
    if found.state in ("Down", "Reserved", "Ringing"):
        return _error(412, "Channel in invalid state")
    priority = params.get("priority")
    try:
        target = pbx.resolve_target(
            found,
            label=params.get("label"),
            context=params.get("context"),
            extension=params.get("extension"),
            priority=int(priority) if priority else None,
        )
    except LabelNotFound:
        return _error(404, "Requested label can not be found")
    if target.priority == 0:
        return _error(400, "Requested priority is illegal")
    pbx.continue_in_dialplan(found, target)
    return _NO_CONTENT


async def set_channel_var(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    found = _control(pbx, path["channelId"])
    if not isinstance(found, FakeChannel):
        return found
    name = str(params.get("variable") or "")
    if not name:
        return _error(400, "Variable name is required")
    await pbx.set_var(found, name, str(params.get("value") or ""))
    return _NO_CONTENT


async def get_channel_var(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    found = _control(pbx, path["channelId"])
    if not isinstance(found, FakeChannel):
        return found
    name = str(params.get("variable") or "")
    if name not in found.variables:
        return _error(404, "Provided variable was not found")
    return 200, {"value": found.variables[name]}


async def create(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    endpoint = str(params.get("endpoint") or "")
    tech, _, device = endpoint.partition("/")
    if tech not in ("PJSIP", "Local") or not device:
        return _ALLOCATION_FAILED
    channel_id = _requested_id(path, params)
    if channel_id in pbx.channels:
        return _error(409, "Channel with given unique ID already exists")
    app_args = tuple(str(params["appArgs"]).split(",")) if params.get("appArgs") else ()
    number = device.split("@", 1)[0]
    ch = await pbx.create_in_stasis(
        endpoint,
        str(params["app"]),
        app_args,
        number,
        channel_id=channel_id,
        variables=dict(params.get("variables") or {}),
    )
    return 200, pbx.snapshot(ch)


async def dial(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    found = _control(pbx, path["channelId"])
    if not isinstance(found, FakeChannel):
        return found
    if found.state != "Down":
        return _error(409, "Channel cannot be dialed.")
    caller = pbx.channels.get(str(params["caller"])) if params.get("caller") else None
    pbx.spawn(pbx.dial_created(found, caller))
    return _NO_CONTENT


# -- applications -----------------------------------------------------------------------------


def _app_json(pbx: Pbx, app: App) -> dict[str, Any]:
    in_stasis = [ch.id for ch in pbx.channels.values() if ch.stasis_app == app.name]
    return app.to_json(in_stasis)


async def list_applications(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    return 200, [_app_json(pbx, app) for app in pbx.apps.apps.values()]


async def get_application(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    app = pbx.apps.get(path["applicationName"])
    return _APP_NOT_FOUND if app is None else (200, _app_json(pbx, app))


def _source_exists(pbx: Pbx, source: str) -> bool:
    scheme, _, name = source.partition(":")
    if scheme == "channel":
        return name in pbx.channels
    if scheme == "endpoint":
        if "/" in name:
            return name in pbx.config.trunk_endpoints
        return any(e.split("/", 1)[0] == name for e in pbx.config.trunk_endpoints)
    return False


async def subscribe(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    app = pbx.apps.get(path["applicationName"])
    if app is None:
        return _APP_NOT_FOUND
    sources = [s for s in str(params.get("eventSource") or "").split(",") if s]
    if not sources:
        return _error(400, "Missing parameter eventSource")
    for source in sources:
        if not source.startswith(EVENT_SOURCE_SCHEMES):
            return _error(400, f"Invalid scheme for event source {source}")
        if not _source_exists(pbx, source):
            return _error(422, "Event source does not exist")
    app.sources.update(sources)
    return 200, _app_json(pbx, app)


async def unsubscribe(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    app = pbx.apps.get(path["applicationName"])
    if app is None:
        return _APP_NOT_FOUND
    sources = [s for s in str(params.get("eventSource") or "").split(",") if s]
    for source in sources:
        if not source.startswith(EVENT_SOURCE_SCHEMES):
            return _error(400, f"Invalid scheme for event source {source}")
        if source not in app.sources:
            return _error(409, "Application not subscribed to event source")
    app.sources.difference_update(sources)
    return 200, _app_json(pbx, app)


async def filter_events(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    """As res_ari_applications: a list given replaces that list, one left out is kept, and an
    empty body empties both."""
    app = pbx.apps.get(path["applicationName"])
    if app is None:
        return _APP_NOT_FOUND
    lists: dict[str, frozenset[str]] = {}
    for key in ("allowed", "disallowed"):
        if key not in params:
            continue
        entries = params[key]
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("type"), str) for e in entries
        ):
            return _error(400, f'Invalid {key} filter: a list of {{"type": name}} objects')
        lists[key] = frozenset(e["type"] for e in entries)
    if not lists:
        lists = {"allowed": frozenset(), "disallowed": frozenset()}
    app.allowed = lists.get("allowed", app.allowed)
    app.disallowed = lists.get("disallowed", app.disallowed)
    return 200, _app_json(pbx, app)


# -- system and endpoints ---------------------------------------------------------------------


async def get_info(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    return 200, {
        "build": {
            "os": "Linux",
            "kernel": "",
            "machine": "x86_64",
            "options": "",
            "date": "",
            "user": "",
        },
        "system": {"version": "22.10.1", "entity_id": ASTERISK_ID},
        "config": {"name": "", "default_language": "en", "setid": {"user": "", "group": ""}},
        "status": {"startup_time": ari_now(), "last_reload_time": ari_now()},
    }


async def ping(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    return 200, {"asterisk_id": ASTERISK_ID, "ping": "pong", "timestamp": ari_now()}


def _endpoint_json(pbx: Pbx, endpoint: str) -> dict[str, Any]:
    tech, resource = endpoint.split("/", 1)
    ids = [ch.id for ch in pbx.channels.values() if ch.endpoint == endpoint]
    return {"technology": tech, "resource": resource, "state": "online", "channel_ids": ids}


async def list_endpoints(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    return 200, [_endpoint_json(pbx, e) for e in pbx.config.trunk_endpoints]


async def get_endpoint(pbx: Pbx, path: dict[str, str], params: dict[str, Any]) -> Reply:
    endpoint = f"{path['tech']}/{path['resource']}"
    if endpoint not in pbx.config.trunk_endpoints:
        return _error(404, "Endpoint not found")
    return 200, _endpoint_json(pbx, endpoint)


# Keyed by resource template and nickname: nicknames repeat across resources ("list", "get").
HANDLERS: dict[tuple[str, str], Handler] = {
    ("/channels", "list"): list_channels,
    ("/channels", "originate"): originate,
    ("/channels/create", "create"): create,
    ("/channels/{channelId}", "get"): get_channel,
    ("/channels/{channelId}", "originateWithId"): originate_with_id,
    ("/channels/{channelId}", "hangup"): hangup,
    ("/channels/{channelId}/continue", "continueInDialplan"): continue_in_dialplan,
    ("/channels/{channelId}/variable", "setChannelVar"): set_channel_var,
    ("/channels/{channelId}/variable", "getChannelVar"): get_channel_var,
    ("/channels/{channelId}/dial", "dial"): dial,
    ("/applications", "list"): list_applications,
    ("/applications/{applicationName}", "get"): get_application,
    ("/applications/{applicationName}/subscription", "subscribe"): subscribe,
    ("/applications/{applicationName}/subscription", "unsubscribe"): unsubscribe,
    ("/applications/{applicationName}/eventFilter", "filter"): filter_events,
    ("/asterisk/info", "getInfo"): get_info,
    ("/asterisk/ping", "ping"): ping,
    ("/endpoints", "list"): list_endpoints,
    ("/endpoints/{tech}/{resource}", "get"): get_endpoint,
}


def handler_for(template: str, nickname: str) -> Handler | None:
    return HANDLERS.get((template, nickname))
