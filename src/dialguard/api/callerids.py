"""Caller IDs: list, add, show with health, rest, release, retire (retirement is final: 409)."""

from __future__ import annotations

from aiohttp import web

from dialguard.api.bodies import json_object, read_json, text_field
from dialguard.api.context import answer, deps, number
from dialguard.api.errors import BadRequest, NotFound
from dialguard.policy.codes import CallerIdState

STATES = frozenset(s.value for s in CallerIdState)
TRANSITIONS = {"rest": "rested", "release": "active", "retire": "retired"}


async def list_callerids(request: web.Request) -> web.Response:
    state = request.query.get("state") or None
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(sorted(STATES))}")
    return answer({"callerids": await deps(request).callerids.list(state)})


async def add_callerid(request: web.Request) -> web.Response:
    d = deps(request)
    body = json_object(await read_json(request, d.max_body))
    e164 = number(text_field(body, "number", required=True) or "", request)
    row = await d.callerids.add(e164, text_field(body, "campaign") or None)
    return answer(row, status=201)


async def get_callerid(request: web.Request) -> web.Response:
    e164 = number(request.match_info["number"], request)
    row = await deps(request).callerids.get(e164)
    if row is None:
        raise NotFound(f"caller ID {e164} is not registered")
    return answer(row)


async def change_state(request: web.Request) -> web.Response:
    d = deps(request)
    e164 = number(request.match_info["number"], request)
    action = request.path.rsplit("/", 1)[1]
    body = json_object(await read_json(request, d.max_body)) if request.body_exists else {}
    state = TRANSITIONS[action]
    reason = text_field(body, "reason") or ("manual" if state == "rested" else None)
    return answer(await d.callerids.set_state(e164, state, reason))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/callerids", list_callerids)
    app.router.add_post("/v1/callerids", add_callerid)
    app.router.add_get("/v1/callerids/{number}", get_callerid)
    for action in TRANSITIONS:
        app.router.add_post(f"/v1/callerids/{{number}}/{action}", change_state)
