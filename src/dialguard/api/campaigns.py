"""Campaigns: list, show, set profile and overrides (every problem reported), pause, resume."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dialguard.api.bodies import json_object, read_json, text_field
from dialguard.api.context import answer, deps
from dialguard.api.errors import BadRequest

MAX_NAME = 200


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not name.strip() or len(name) > MAX_NAME:
        raise BadRequest(f"a campaign name is 1 to {MAX_NAME} characters")
    return name


async def list_campaigns(request: web.Request) -> web.Response:
    return answer({"campaigns": await deps(request).campaigns.list()})


async def get_campaign(request: web.Request) -> web.Response:
    name = _name(request)
    row = await deps(request).campaigns.get(name)
    # A campaign no one has set runs on the default profile: show that rather than a 404.
    return answer(row or {"name": name, "profile": "default", "overrides": {}, "paused": False})


async def set_campaign(request: web.Request) -> web.Response:
    d = deps(request)
    name = _name(request)
    body = json_object(await read_json(request, d.max_body))
    overrides: Any = body.get("overrides")
    if overrides is not None and not isinstance(overrides, dict):
        raise BadRequest("overrides must be an object of profile keys")
    row = await d.campaigns.set(name, text_field(body, "profile"), overrides)
    return answer(row)


async def pause(request: web.Request) -> web.Response:
    return await _pause(request, paused=True)


async def resume(request: web.Request) -> web.Response:
    return await _pause(request, paused=False)


async def _pause(request: web.Request, *, paused: bool) -> web.Response:
    d = deps(request)
    name = _name(request)
    body = json_object(await read_json(request, d.max_body)) if request.body_exists else {}
    reason = text_field(body, "reason") or ("manual" if paused else None)
    return answer(await d.campaigns.set_paused(name, paused, reason))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/campaigns", list_campaigns)
    app.router.add_get("/v1/campaigns/{name}", get_campaign)
    app.router.add_put("/v1/campaigns/{name}", set_campaign)
    app.router.add_post("/v1/campaigns/{name}/pause", pause)
    app.router.add_post("/v1/campaigns/{name}/resume", resume)
