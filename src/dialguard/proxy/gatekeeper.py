"""Originations through the proxy: decided first, then forwarded, then linked to their channel.

- ``POST /channels`` and ``/channels/{id}`` to a trunk endpoint: decided on the destination
  in the endpoint, the caller ID and the campaign variable.
- ``POST /channels/create`` places no call: forwarded, and a trunk channel it makes is
  remembered with what to decide on later.
- ``POST /channels/{id}/dial`` places the call: decided on what its create said (or, for a
  channel dialguard did not see created, on what Asterisk says about it).

An allowed call is linked to its channel, which is the trunk leg itself, for its outcome and
so that the bypass detector knows a decision explains it: before forwarding when the request
names the channel id, else from the ``id`` in Asterisk's answer. An allowed call that Asterisk
refuses, or that cannot reach it, is recorded as not placed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web

from dialguard.policy.model import Decision, DecisionRequest
from dialguard.proxy.created import CreatedChannels
from dialguard.proxy.origination import (
    Kind,
    Origination,
    Route,
    Unreadable,
    campaign_of,
    read_origination,
    response_channel_id,
    trunk_destination,
)
from dialguard.proxy.upstream import Upstream, UpstreamUnavailable, json_error

log = logging.getLogger(__name__)


class Decide(Protocol):
    async def decide(self, request: DecisionRequest) -> Decision: ...
    async def attach_channel(self, decision_id: int, channel_id: str) -> None: ...


class TrunkLinks(Protocol):
    """The outcome tracker, as the proxy tells it about the calls it let through."""

    def allowed_trunk(
        self, channel_id: str, decision_id: int | None, campaign: str, caller_id: str
    ) -> None: ...

    def not_placed(
        self,
        decision_id: int | None,
        campaign: str,
        caller_id: str,
        at: datetime,
        *,
        channel_id: str | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class _Call:
    """What a trunk origination is decided on."""

    destination: str
    caller_number: str
    campaign: str | None
    channel_id: str | None


class Gatekeeper:
    def __init__(
        self,
        decider: Decide,
        links: TrunkLinks,
        upstream: Upstream,
        *,
        trunk_patterns: Sequence[re.Pattern[str]],
        campaign_variable: str,
        trunk_channel_prefixes: tuple[str, ...],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._decider = decider
        self._links = links
        self._upstream = upstream
        self._patterns = tuple(trunk_patterns)
        self._campaign_variable = campaign_variable
        self._trunk_channel_prefixes = trunk_channel_prefixes
        self._clock = clock
        self.created = CreatedChannels()

    async def handle(self, request: web.Request, route: Route, tail: str) -> web.StreamResponse:
        body = await request.read()
        origination = read_origination(
            route, request.query.items(), request.headers.get("Content-Type", ""), body
        )
        if isinstance(origination, Unreadable):
            log.info("proxy: refused an origination whose body is unreadable")
            return json_error(400, origination.message)
        if origination.kind is Kind.CREATE:
            return await self._create(request, tail, body, origination)
        call = await self._call_for(origination)
        if call is None:
            # Not a trunk: a Local channel runs the dialplan, where the gate decides it.
            return await self._upstream.forward(request, tail, body)
        decision = await self._decide(call)
        if decision is None:
            return json_error(503, "dialguard: the call could not be decided")
        if not decision.allowed:
            rule = decision.rule.value if decision.rule else "denied"
            return json_error(403, f"dialguard: {rule}: {decision.evidence}")
        response = await self._place(request, tail, body, call, decision)
        if origination.kind is Kind.DIAL and 200 <= response.status < 300 and call.channel_id:
            self.created.forget(call.channel_id)
        return response

    # -- what to decide on ---------------------------------------------------------------------

    async def _call_for(self, origination: Origination) -> _Call | None:
        if origination.kind is Kind.ORIGINATE:
            destination = trunk_destination(origination.endpoint, self._patterns)
            if destination is None:
                return None
            return _Call(
                destination,
                origination.caller_number or "",
                campaign_of(origination.variables, self._campaign_variable),
                origination.channel_id,
            )
        return await self._dialed_call(origination)

    async def _dialed_call(self, origination: Origination) -> _Call | None:
        channel_id = origination.channel_id
        assert channel_id is not None  # /dial names its channel in the path
        created = self.created.get(channel_id)
        snapshot: dict[str, Any] | None = None
        if created is None:
            snapshot = await self._channel(channel_id)
            if snapshot is None or not str(snapshot.get("name", "")).startswith(
                self._trunk_channel_prefixes
            ):
                return None  # gone (Asterisk answers 404) or not a trunk channel
            log.warning(
                "proxy: dial of trunk channel %s that dialguard did not see created: its"
                " destination is unknown",
                channel_id,
            )
        caller: str | None = None
        if origination.dial_caller:
            # Asterisk shows the far end the caller channel's ID (connected line from caller).
            caller = _number(await self._channel(origination.dial_caller), "caller")
        if caller is None and created is not None:
            caller = created.caller_number
        if caller is None:
            snapshot = snapshot or await self._channel(channel_id)
            caller = _number(snapshot, "connected") or _number(snapshot, "caller")
        return _Call(
            created.destination if created else "",
            caller or "",
            created.campaign if created else None,
            channel_id,
        )

    async def _channel(self, channel_id: str) -> dict[str, Any] | None:
        status, found = await self._upstream.get_json(f"/channels/{_segment(channel_id)}")
        return found if status == 200 and isinstance(found, dict) else None

    # -- deciding and placing ------------------------------------------------------------------

    async def _decide(self, call: _Call) -> Decision | None:
        try:
            decision = await self._decider.decide(
                DecisionRequest(
                    caller_id=call.caller_number,
                    destination=call.destination,
                    campaign=call.campaign,
                    source="proxy",
                    channel_id=call.channel_id,
                )
            )
        except Exception:
            # Nothing reaches Asterisk undecided: fail closed.
            log.exception("proxy: deciding an origination failed")
            return None
        log.info(
            "proxy: origination%s: %s %s (%s)",
            f" of channel {call.channel_id}" if call.channel_id else "",
            decision.verdict.value,
            decision.rule.value if decision.rule else "",
            decision.evidence,
        )
        return decision

    async def _place(
        self, request: web.Request, tail: str, body: bytes, call: _Call, decision: Decision
    ) -> web.StreamResponse:
        channel_id = call.channel_id
        if channel_id is not None:
            # Linked before Asterisk sees the request: its first events may beat its answer.
            self._link(channel_id, decision)
        try:
            answer = await self._upstream.exchange(request, tail, body)
        except UpstreamUnavailable as exc:
            self._not_placed(decision, channel_id)
            return exc.response()
        if not answer.ok:
            log.info("proxy: Asterisk refused an allowed origination: HTTP %s", answer.status)
            self._not_placed(decision, channel_id)
        elif channel_id is None:
            new_id = response_channel_id(answer.body)
            if new_id is None:
                log.error("proxy: Asterisk's answer to an origination names no channel id")
            else:
                self._link(new_id, decision)
                if decision.decision_id is not None:
                    await self._attach(decision.decision_id, new_id)
        return answer.response()

    async def _attach(self, decision_id: int, channel_id: str) -> None:
        try:
            await self._decider.attach_channel(decision_id, channel_id)
        except Exception as exc:  # the call is placed; the audit link is a nicety
            log.warning(
                "proxy: decision %s not linked to channel %s: %s", decision_id, channel_id, exc
            )

    async def _create(
        self, request: web.Request, tail: str, body: bytes, origination: Origination
    ) -> web.StreamResponse:
        destination = trunk_destination(origination.endpoint, self._patterns)
        if destination is None:
            return await self._upstream.forward(request, tail, body)
        answer = await self._upstream.exchange(request, tail, body)
        channel_id = response_channel_id(answer.body) if answer.ok else None
        if channel_id is not None:
            self.created.remember(
                channel_id,
                destination,
                origination.caller_number,
                campaign_of(origination.variables, self._campaign_variable),
            )
        return answer.response()

    def _link(self, channel_id: str, decision: Decision) -> None:
        self._links.allowed_trunk(
            channel_id, decision.decision_id, decision.campaign, decision.caller_id
        )

    def _not_placed(self, decision: Decision, channel_id: str | None) -> None:
        self._links.not_placed(
            decision.decision_id,
            decision.campaign,
            decision.caller_id,
            self._clock(),
            channel_id=channel_id,
        )


def _number(snapshot: dict[str, Any] | None, party: str) -> str | None:
    value = snapshot.get(party) if snapshot else None
    number = value.get("number") if isinstance(value, dict) else None
    return number if isinstance(number, str) and number else None


def _segment(value: str) -> str:
    """One path segment, quoted so that an id can never add path elements."""
    return quote(value, safe="")
