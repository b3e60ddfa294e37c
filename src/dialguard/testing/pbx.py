"""The telephony side of the fake: channels, a small dialplan, and the event sequences.

The sequences reproduce the lab recordings (Asterisk 22.10.1): Local ;1/;2 pairs for
originated calls, Stasis() with STASISSTATUS, continue/hangup from ARI, and the trunk leg.
The trunk is a single PJSIP channel ("PJSIP/carrier-00000001") as with a real carrier, where
the lab used a Local pair into a dialplan carrier simulator; its ChannelDestroyed carries
`tech_cause` for SIP failures as Asterisk 22.7+ does.

The dialplan of the outbound context (`outbound` by default) is fixed:

    1            NoOp(outbound ${EXTEN} from ${CALLERID(num)})
    2            Stasis(<app>,<stasis args>)
    3            NoOp(STASISSTATUS=${STASISSTATUS})
    4            GotoIf($["${STASISSTATUS}" != "SUCCESS"]?failed)
    5  allowed   Dial(PJSIP/${EXTEN}@<trunk>,30)
    6            NoOp(DIALSTATUS=${DIALSTATUS} HANGUPCAUSE=${HANGUPCAUSE})
    7            Hangup()            ; Hangup(<dial cause>) with keep_dial_cause
    8  failed    Hangup(21)          ; label dg_down too
    9  denied    Playback(dialguard-denied)
    10           Hangup(21)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from dialguard.testing.apps import AppRegistry, build_event
from dialguard.testing.causes import (
    cause_text,
    cause_to_sip,
    dial_status_for,
    dialstatus_variable_for,
)
from dialguard.testing.channels import Call, ChannelIds, FakeChannel, Via, parse_caller_id
from dialguard.testing.outcomes import Outcome

log = logging.getLogger(__name__)

LABELS: dict[str, int] = {"allowed": 5, "failed": 8, "dg_down": 8, "denied": 9}
_LAST_PRIORITY = 10
_OUTGOING_APPS = ("AppDial", "AppDial2")
_EXTEN_PATTERN = re.compile(r"\d+")  # _X. in the outbound context
_VARIABLE = re.compile(r"\$\{([^}]+)\}")


@dataclass(frozen=True)
class PbxConfig:
    """How the fake Asterisk is set up; see FakeAsterisk for the meaning of each field."""

    app: str = "dialguard"
    outbound_context: str = "outbound"
    trunk_endpoints: tuple[str, ...] = ("PJSIP/carrier",)
    keep_dial_cause: bool = False
    verbose_events: bool = True
    stasis_args: tuple[str, ...] = ("${EXTEN}", "${CALLERID(num)}")
    channelvars: tuple[str, ...] = ()
    dial_timeout: int = 30
    default_outcome: Outcome = field(default_factory=Outcome.answered)

    @property
    def trunk(self) -> str:
        """The endpoint the dialplan dials ("PJSIP/carrier")."""
        return self.trunk_endpoints[0]


@dataclass(frozen=True, slots=True)
class DialplanTarget:
    context: str
    exten: str
    priority: int


class LabelNotFound(Exception):
    """continue/originate named a label the dialplan does not have."""


class Pbx:
    """Owns every channel and the tasks that move calls along; `shutdown()` cancels them.

    `calls` lists every call placed, unless `keep_calls` is False (benchmarks).
    """

    def __init__(self, config: PbxConfig, apps: AppRegistry, *, keep_calls: bool = True) -> None:
        self.config = config
        self.apps = apps
        self.channels: dict[str, FakeChannel] = {}
        self.calls: list[Call] = []
        self._keep_calls = keep_calls
        self.outcomes: dict[str, Outcome] = {}
        self._ids = ChannelIds()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- task ownership ----------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("fake ARI: call task failed", exc_info=task.exception())

    async def shutdown(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- events ------------------------------------------------------------------------------

    def snapshot(self, ch: FakeChannel) -> dict[str, Any]:
        return ch.snapshot(self.config.channelvars)

    async def emit(self, event_type: str, related: Iterable[FakeChannel], **fields: Any) -> None:
        await self.apps.publish(build_event(event_type, **fields), related)

    async def emit_channel(self, event_type: str, ch: FakeChannel, **fields: Any) -> None:
        await self.emit(event_type, [ch], **fields, channel=self.snapshot(ch))

    async def chatter(self, event_type: str, ch: FakeChannel, **fields: Any) -> None:
        """Events Asterisk sends that dialguard ignores; left out in fast mode."""
        if self.config.verbose_events:
            await self.emit_channel(event_type, ch, **fields)

    async def set_var(self, ch: FakeChannel, name: str, value: str) -> None:
        ch.variables[name] = value
        await self.chatter("ChannelVarset", ch, variable=name, value=value)

    async def dialplan_step(self, ch: FakeChannel, priority: int, app: str, data: str) -> None:
        ch.set_dialplan(priority, app, data)
        await self.chatter("ChannelDialplan", ch, dialplan_app=app, dialplan_app_data=data)

    async def dial_event(
        self, caller: FakeChannel | None, peer: FakeChannel, status: str, dialstring: str
    ) -> None:
        fields: dict[str, Any] = {"dialstatus": status, "forward": "", "dialstring": dialstring}
        if caller is not None:
            fields["caller"] = self.snapshot(caller)
        fields["peer"] = self.snapshot(peer)
        related = [peer] if caller is None else [caller, peer]
        await self.emit("Dial", related, **fields)

    async def hangup_request(
        self, ch: FakeChannel, cause: int, *, soft: bool = False, tech_cause: int | None = None
    ) -> None:
        fields: dict[str, Any] = {"cause": cause}
        if soft:
            fields["soft"] = True
        if tech_cause is not None:
            fields["tech_cause"] = tech_cause
        await self.emit_channel("ChannelHangupRequest", ch, **fields)

    async def destroy(self, ch: FakeChannel, cause: int, tech_cause: int | None = None) -> None:
        if ch.destroyed:
            return
        ch.destroyed = True
        ch.hangup_cause = cause
        ch.stasis_app = None
        if ch.app_name not in _OUTGOING_APPS:
            ch.app_name = ch.app_data = ""
        self.channels.pop(ch.id, None)
        fields: dict[str, Any] = {"cause": cause, "cause_txt": cause_text(cause)}
        if tech_cause is not None:
            fields["tech_cause"] = tech_cause
        await self.emit("ChannelDestroyed", [ch], **fields, channel=self.snapshot(ch))
        call = ch.call
        if call is not None and all(c.destroyed for c in call.channels):
            call.ended.set()

    async def stasis_end(self, ch: FakeChannel) -> None:
        app, ch.stasis_app = ch.stasis_app, None
        if app is not None:
            # Sent with the snapshot still showing Stasis, as Asterisk does.
            snap = self.snapshot(ch)
            await self.apps.send_to_app(app, build_event("StasisEnd", channel=snap))

    # -- channel creation --------------------------------------------------------------------

    def new_channel(
        self,
        name: str,
        state: str,
        context: str,
        exten: str,
        *,
        channel_id: str | None = None,
        **kw: Any,
    ) -> FakeChannel:
        """A new channel; `channel_id` is the id an originate or create asked for (channelId)."""
        ch = FakeChannel(
            id=channel_id or self._ids.unique_id(),
            name=name,
            state=state,
            context=context,
            exten=exten,
            **kw,
        )
        self.channels[ch.id] = ch
        return ch

    def outcome_for(self, number: str) -> Outcome:
        return self.outcomes.get(number, self.config.default_outcome)

    def trunk_for(self, endpoint: str) -> str | None:
        """ "PJSIP/15550100@carrier" -> "PJSIP/carrier" when that trunk is configured."""
        tech, _, rest = endpoint.partition("/")
        resource = rest.split("@", 1)[1] if "@" in rest else rest
        candidate = f"{tech}/{resource}"
        return candidate if candidate in self.config.trunk_endpoints else None

    # -- outbound calls through the gate -----------------------------------------------------

    def start_outbound(
        self,
        number: str,
        caller_id: str,
        *,
        caller_name: str,
        via: Via,
        outcome: Outcome | None,
        variables: dict[str, str],
        stasis_args: tuple[str, ...] | None,
        originate_timeout: float | None,
        originate_context: str = "dialer-entry",
        originate_exten: str | None = None,
    ) -> Call:
        call = Call(
            number=number,
            caller_id=caller_id,
            caller_name=caller_name,
            via=via,
            outcome=outcome or self.outcome_for(number),
            originate_context=originate_context,
            originate_exten=originate_exten or number,
        )
        if self._keep_calls:
            self.calls.append(call)
        call.task = self.spawn(self._outbound(call, variables, stasis_args, originate_timeout))
        return call

    async def _outbound(
        self,
        call: Call,
        variables: dict[str, str],
        stasis_args: tuple[str, ...] | None,
        originate_timeout: float | None,
    ) -> None:
        ctx, num = self.config.outbound_context, call.number
        if call.via == "local":
            name1, name2 = self._ids.local_names(num, ctx)
            one = self.new_channel(name1, "Down", ctx, num, call=call)
            two = self.new_channel(name2, "Ring", ctx, num, call=call)
            call.originated, call.stasis = one, two
            for key, value in variables.items():
                # Originate variables land on ;1; "_"-prefixed ones are inherited by ;2.
                one.variables[key.lstrip("_")] = value
                if key.startswith("_"):
                    two.variables[key.lstrip("_")] = value
            await self.emit_channel("ChannelCreated", one)
            await self.emit_channel("ChannelCreated", two)
            await self.dialplan_step(one, 1, "AppDial2", "(Outgoing Line)")
            one.caller_name, one.caller_number = call.caller_name, call.caller_id
            await self.chatter("ChannelCallerId", one, **_PRESENTATION)
            one.connected_name, one.connected_number = call.caller_name, call.caller_id
            await self.chatter("ChannelConnectedLine", one)
            two.caller_name, two.caller_number = call.caller_name, call.caller_id
            two.connected_name, two.connected_number = call.caller_name, call.caller_id
            await self.chatter("ChannelCallerId", two, **_PRESENTATION)
            await self.chatter("ChannelConnectedLine", two)
            await self.dial_event(None, one, "", f"{num}@{ctx}")
            if originate_timeout is not None:
                call.timer = self.spawn(self._originate_timer(call, originate_timeout))
        else:
            two = self.new_channel(
                self._ids.pjsip_name("loopback"),
                "Ring",
                ctx,
                num,
                call=call,
                caller_name=call.caller_name,
                caller_number=call.caller_id,
                protocol_id=f"{uuid.uuid4().hex[:12]}@127.0.0.1",
                variables=dict(variables),
            )
            call.stasis = two
            await self.emit_channel("ChannelCreated", two)
        call.created.set()
        await self._run_dialplan(call, 1, stasis_args)

    async def _run_dialplan(
        self, call: Call, priority: int, stasis_args: tuple[str, ...] | None = None
    ) -> None:
        """Run the outbound context on the Stasis channel from `priority` until it waits/ends."""
        ch = call.stasis
        assert ch is not None
        cfg = self.config
        while not ch.destroyed:
            if priority == 1:
                await self.dialplan_step(
                    ch, 1, "NoOp", f"outbound {ch.exten} from {ch.caller_number}"
                )
                priority = 2
            elif priority == 2:
                args = self._stasis_args(ch, stasis_args)
                await self.dialplan_step(ch, 2, "Stasis", ",".join((cfg.app, *args)))
                if await self._enter_stasis(ch, args):
                    return  # parked: an ARI command moves it on
                priority = 3
            elif priority == 3:
                status = ch.variables.get("STASISSTATUS", "")
                await self.dialplan_step(ch, 3, "NoOp", f"STASISSTATUS={status}")
                priority = 4
            elif priority == 4:
                failed = ch.variables.get("STASISSTATUS") != "SUCCESS"
                await self.dialplan_step(ch, 4, "GotoIf", f"{int(failed)}?failed")
                priority = LABELS["failed"] if failed else 5
            elif priority == 5:
                tech, resource = cfg.trunk.split("/", 1)
                data = f"{tech}/{ch.exten}@{resource},{cfg.dial_timeout}"
                await self.dialplan_step(ch, 5, "Dial", data)
                if await self._dial_trunk(call, ch):
                    return  # answered; the bridge ended and the channel hung up
                priority = 6
            elif priority == 6:
                status = ch.variables.get("DIALSTATUS", "")
                cause = ch.variables.get("HANGUPCAUSE", "0")
                await self.dialplan_step(ch, 6, "NoOp", f"DIALSTATUS={status} HANGUPCAUSE={cause}")
                priority = 7
            elif priority == 7:
                trunk_cause = call.trunk.hangup_cause if call.trunk is not None else 16
                data = str(trunk_cause) if cfg.keep_dial_cause else ""
                await self.dialplan_step(ch, 7, "Hangup", data)
                await self._dialplan_hangup(call, int(data) if data else (ch.hangup_cause or 16))
                return
            elif priority in (8, 10):
                await self.dialplan_step(ch, priority, "Hangup", "21")
                await self._dialplan_hangup(call, 21)
                return
            elif priority == 9:
                await self.dialplan_step(ch, 9, "Playback", "dialguard-denied")
                priority = 10
            else:
                # Past the last priority the PBX ends normally.
                await self._dialplan_hangup(call, 16)
                return

    def _stasis_args(self, ch: FakeChannel, override: tuple[str, ...] | None) -> tuple[str, ...]:
        if override is not None:
            return override
        return tuple(_substitute(t, ch) for t in self.config.stasis_args)

    async def _enter_stasis(self, ch: FakeChannel, args: tuple[str, ...]) -> bool:
        """Stasis(): park the channel if the application has a socket, else FAILED at once."""
        if self.apps.get(self.config.app) is None:
            log.warning("fake ARI: %s: Stasis app '%s' doesn't exist", ch.name, self.config.app)
            await self.set_var(ch, "STASISSTATUS", "FAILED")
            return False
        ch.stasis_app = self.config.app
        ch.stasis_args = args
        await self.set_var(ch, "STASISSTATUS", "")
        start = build_event("StasisStart", args=list(args), channel=self.snapshot(ch))
        await self.apps.send_to_app(self.config.app, start)
        return True

    async def _dial_trunk(self, call: Call, ch: FakeChannel) -> bool:
        """Dial(PJSIP/<num>@carrier): play the scripted outcome. True when it was answered."""
        endpoint = self.config.trunk
        resource = endpoint.split("/", 1)[1]
        trunk = self.new_channel(
            self._ids.pjsip_name(resource),
            "Down",
            ch.context,
            ch.exten,
            call=call,
            endpoint=endpoint,
        )
        call.trunk = trunk
        await self.set_var(ch, "DIALSTATUS", "")
        await self.emit_channel("ChannelCreated", trunk)
        await self.dialplan_step(trunk, 1, "AppDial", "(Outgoing Line)")
        # Dial sets the outgoing caller to the dialed number, the connected line to the caller.
        trunk.caller_name, trunk.caller_number = ch.caller_name, call.number
        await self.chatter("ChannelCallerId", trunk, **_PRESENTATION)
        trunk.connected_name, trunk.connected_number = ch.caller_name, ch.caller_number
        await self.chatter("ChannelConnectedLine", trunk)
        await self.dial_event(ch, trunk, "", f"{call.number}@{resource}")
        outcome = call.outcome
        if outcome.ring_seconds > 0 or outcome.kind == "no_answer":
            trunk.state = "Ringing"
            await self.emit_channel("ChannelStateChange", trunk)
            await self.dial_event(ch, trunk, "RINGING", "")
            await asyncio.sleep(outcome.ring_seconds)
        if outcome.kind == "answered":
            await self._answered(call, ch, trunk, outcome)
            return True
        if outcome.kind == "failed":
            await self.hangup_request(trunk, outcome.cause, tech_cause=outcome.tech_cause)
        await self.dial_event(ch, trunk, dial_status_for(outcome.cause), "")
        await self.destroy(trunk, outcome.cause, outcome.tech_cause)
        # A busy/congestion/no-answer Dial leaves HANGUPCAUSE at 0, so a plain Hangup()
        # ends the outbound halves with 16; a rejection's cause reaches them (recordings).
        keeps = outcome.cause not in (17, 34) and outcome.kind != "no_answer"
        ch.hangup_cause = outcome.cause if keeps else 0
        ch.variables["HANGUPCAUSE"] = str(ch.hangup_cause)
        await self.set_var(ch, "DIALSTATUS", dialstatus_variable_for(outcome.cause))
        return False

    async def _answered(
        self, call: Call, ch: FakeChannel, trunk: FakeChannel, outcome: Outcome
    ) -> None:
        trunk.state = "Up"
        await self.emit_channel("ChannelStateChange", trunk)
        await self.set_var(ch, "DIALSTATUS", "ANSWER")
        await self.dial_event(ch, trunk, "ANSWER", "")
        ch.state = "Up"
        await self.emit_channel("ChannelStateChange", ch)
        one = call.originated
        if one is not None and not one.destroyed:
            one.state = "Up"
            await self.emit_channel("ChannelStateChange", one)
            ctx = self.config.outbound_context
            await self.dial_event(None, one, "ANSWER", f"{call.number}@{ctx}")
            one.context, one.exten = call.originate_context, call.originate_exten
            await self.dialplan_step(
                one, 1, "NoOp", f"{call.originate_context}: {one.name} answered"
            )
            await self.dialplan_step(one, 2, "Wait", "60")
        call.answered = True
        if call.timer is not None:
            call.timer.cancel()
        await asyncio.sleep(outcome.talk_seconds)
        # The far end hangs up; the bridge ends and so does the outbound dialplan.
        await self.hangup_request(trunk, 16)
        await self.destroy(trunk, 16)
        await self._dialplan_hangup(call, 16)

    async def _dialplan_hangup(self, call: Call, cause: int) -> None:
        """The Stasis channel's PBX ends with `cause`; the Local ;1 half follows."""
        two, one = call.stasis, call.originated
        assert two is not None
        if two.destroyed:
            return
        await self.hangup_request(two, 16, soft=True)
        if one is not None and not one.destroyed:
            await self.hangup_request(one, cause)
        tech = cause_to_sip(cause) if call.via == "sip" and two.state != "Up" else None
        await self.destroy(two, cause, tech)
        if one is not None and not one.destroyed:
            if one.state == "Up":
                await self.hangup_request(one, 16, soft=True)
            else:
                await self.dial_event(
                    None, one, "NOANSWER", f"{call.number}@{self.config.outbound_context}"
                )
            await self.destroy(one, cause)

    async def _originate_timer(self, call: Call, seconds: float) -> None:
        """The originate's dial timeout: nothing answered ;1 in time, so both halves end (19)."""
        await asyncio.sleep(seconds)
        if call.answered or call.ended.is_set():
            return
        self._cancel_call_task(call)
        two, one = call.stasis, call.originated
        assert two is not None and one is not None
        await self.hangup_request(two, 19)
        if two.stasis_app is not None:
            await self.stasis_end(two)
            await self.set_var(two, "STASISSTATUS", "SUCCESS")
        if call.trunk is not None and not call.trunk.destroyed:
            await self.dial_event(two, call.trunk, "CANCEL", "")
            await self.destroy(call.trunk, 19)
        await self.destroy(one, 19)
        await self.hangup_request(two, 16, soft=True)
        await self.destroy(two, 19)

    def _cancel_call_task(self, call: Call) -> None:
        task = call.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()

    # -- ARI commands ------------------------------------------------------------------------

    def resolve_target(
        self,
        ch: FakeChannel,
        *,
        label: str | None,
        context: str | None,
        extension: str | None,
        priority: int | None,
    ) -> DialplanTarget:
        """Where `continue` sends a channel, computed as res/ari/resource_channels.c does."""
        if context:
            ctx, exten = context, extension or "s"
        else:
            ctx, exten = ch.context, extension or ch.exten
        if label:
            if re.fullmatch(r"-?\d+", label):
                return DialplanTarget(ctx, exten, int(label))
            known = ctx == self.config.outbound_context and _EXTEN_PATTERN.fullmatch(exten)
            if not known or label not in LABELS:
                raise LabelNotFound(label)
            return DialplanTarget(ctx, exten, LABELS[label])
        if priority:
            return DialplanTarget(ctx, exten, priority)
        if not context and not extension:
            return DialplanTarget(ctx, exten, ch.priority + 1)
        return DialplanTarget(ctx, exten, 1)

    def continue_in_dialplan(self, ch: FakeChannel, target: DialplanTarget) -> None:
        """Take the channel out of Stasis now (a second continue gets 409) and run on."""
        call = ch.call
        app, ch.stasis_app = ch.stasis_app, None
        if call is None or ch is not call.stasis:
            self.spawn(self._leave_standalone(ch, app))
            return
        call.task = self.spawn(self._continue(call, ch, app, target))

    async def _continue(
        self, call: Call, ch: FakeChannel, app: str | None, target: DialplanTarget
    ) -> None:
        ch.stasis_app = app
        await self.stasis_end(ch)
        await self.set_var(ch, "STASISSTATUS", "SUCCESS")
        valid = (
            target.context == self.config.outbound_context
            and _EXTEN_PATTERN.fullmatch(target.exten) is not None
            and 1 <= target.priority <= _LAST_PRIORITY
        )
        if valid:
            ch.exten = target.exten
            await self._run_dialplan(call, target.priority)
            return
        # "sent to invalid extension but no invalid handler": the channel dies with cause 0.
        log.warning(
            "fake ARI: Channel '%s' sent to invalid extension but no invalid handler: %s,%s,%s",
            ch.name,
            target.context,
            target.exten,
            target.priority,
        )
        ch.context, ch.exten, ch.priority = target.context, target.exten, target.priority
        await self.hangup_request(ch, 16, soft=True)
        one = call.originated
        if one is not None and not one.destroyed:
            await self.hangup_request(one, 0)
            await self.dial_event(
                None, one, "NOANSWER", f"{call.number}@{self.config.outbound_context}"
            )
            await self.destroy(one, 0)
        ch.app_name = ch.app_data = ""
        await self.destroy(ch, 0)

    async def _leave_standalone(self, ch: FakeChannel, app: str | None) -> None:
        ch.stasis_app = app
        await self.stasis_end(ch)
        await self.hangup_request(ch, 16, soft=True)
        await self.destroy(ch, ch.hangup_cause or 16)

    async def hangup(self, ch: FakeChannel, cause: int) -> None:
        """DELETE /channels/{id}: every resulting event is sent before this returns."""
        call = ch.call
        await self.hangup_request(ch, 32, soft=True)
        if call is None:
            if ch.stasis_app is not None:
                await self.stasis_end(ch)
            await self.destroy(ch, cause)
            return
        if call.task is not None and call.task is not asyncio.current_task():
            self._cancel_call_task(call)
        if call.timer is not None:
            call.timer.cancel()
        if ch is call.stasis:
            if ch.stasis_app is not None:
                await self.stasis_end(ch)
                await self.set_var(ch, "STASISSTATUS", "SUCCESS")
            if call.trunk is not None and not call.trunk.destroyed:
                await self.dial_event(ch, call.trunk, "CANCEL", "")
                await self.destroy(call.trunk, cause)
            await self._dialplan_hangup(call, cause)
            return
        if ch is call.trunk:
            if ch.stasis_app is not None:
                await self.stasis_end(ch)
            await self.destroy(ch, cause)
            if call.stasis is not None:
                # Like the far end hanging up: the outbound halves end normally after it.
                await self._dialplan_hangup(call, 16 if call.answered else cause)
            return
        # The originated ;1 half: Local propagates the hangup to ;2 and the trunk.
        await self.destroy(ch, cause)
        if call.trunk is not None and not call.trunk.destroyed:
            await self.destroy(call.trunk, cause)
        if call.stasis is not None and not call.stasis.destroyed:
            if call.stasis.stasis_app is not None:
                await self.stasis_end(call.stasis)
            await self.hangup_request(call.stasis, cause)
            await self.destroy(call.stasis, cause)

    # -- channels that bypass the gate -------------------------------------------------------

    def start_direct(
        self,
        number: str,
        caller_id: str,
        *,
        caller_name: str,
        endpoint: str,
        outcome: Outcome | None,
        app: str | None = None,
        app_args: tuple[str, ...] = (),
        context: str = "default",
        exten: str = "s",
        channel_id: str | None = None,
    ) -> Call:
        """A channel straight to the trunk (AMI/ARI originate to PJSIP/<num>@carrier)."""
        call = Call(
            number=number,
            caller_id=caller_id,
            caller_name=caller_name,
            via="sip",
            outcome=outcome or self.outcome_for(number),
            originate_context=context,
            originate_exten=exten,
        )
        if self._keep_calls:
            self.calls.append(call)
        call.task = self.spawn(self._direct(call, endpoint, app, app_args, channel_id))
        return call

    async def _direct(
        self,
        call: Call,
        endpoint: str,
        app: str | None,
        app_args: tuple[str, ...],
        channel_id: str | None,
    ) -> None:
        resource = endpoint.split("/", 1)[1]
        trunk = self.new_channel(
            self._ids.pjsip_name(resource),
            "Down",
            "default",
            "s",
            channel_id=channel_id,
            call=call,
            endpoint=endpoint,
            caller_name=call.caller_name,
            caller_number=call.caller_id,
        )
        call.trunk = trunk
        await self.emit_channel("ChannelCreated", trunk)
        await self.dialplan_step(trunk, 1, "AppDial2", "(Outgoing Line)")
        await self.dial_event(None, trunk, "", f"{call.number}@{resource}")
        call.created.set()
        outcome = call.outcome
        if outcome.ring_seconds > 0 or outcome.kind == "no_answer":
            trunk.state = "Ringing"
            await self.emit_channel("ChannelStateChange", trunk)
            await asyncio.sleep(outcome.ring_seconds)
        if outcome.kind != "answered":
            if outcome.kind == "failed":
                await self.hangup_request(trunk, outcome.cause, tech_cause=outcome.tech_cause)
            await self.dial_event(None, trunk, dial_status_for(outcome.cause), "")
            await self.destroy(trunk, outcome.cause, outcome.tech_cause)
            return
        trunk.state = "Up"
        await self.emit_channel("ChannelStateChange", trunk)
        await self.dial_event(None, trunk, "ANSWER", "")
        call.answered = True
        if app is not None:
            trunk.set_dialplan(1, "Stasis", ",".join((app, *app_args)))
            if self.apps.get(app) is not None:
                trunk.stasis_app = app
                start = build_event(
                    "StasisStart", args=list(app_args), channel=self.snapshot(trunk)
                )
                await self.apps.send_to_app(app, start)
        else:
            trunk.context, trunk.exten = call.originate_context, call.originate_exten
            await self.dialplan_step(
                trunk, 1, "NoOp", f"{call.originate_context}: {trunk.name} answered"
            )
        await asyncio.sleep(outcome.talk_seconds)
        await self.hangup_request(trunk, 16)
        if trunk.stasis_app is not None:
            await self.stasis_end(trunk)
        await self.destroy(trunk, 16)

    # -- channels created in Stasis (POST /channels/create, then /dial) ----------------------

    async def create_in_stasis(
        self,
        endpoint: str,
        app: str,
        app_args: tuple[str, ...],
        number: str,
        *,
        channel_id: str | None = None,
        variables: dict[str, str] | None = None,
    ) -> FakeChannel:
        """POST /channels/create: a Down channel in Stasis that calls `number` once dialed.

        `variables` are set on it as Asterisk does, CALLERID(...) functions included; nothing
        else sets a created channel's caller ID (create has no callerId parameter).
        """
        trunk_endpoint = self.trunk_for(endpoint)
        resource = (trunk_endpoint or endpoint).split("/", 1)[1].split("@")[-1]
        ch = self.new_channel(
            self._ids.pjsip_name(resource),
            "Down",
            "default",
            "s",
            channel_id=channel_id,
            endpoint=trunk_endpoint,
            dialed=number,
        )
        for name, value in (variables or {}).items():
            _set_originate_variable(ch, name, value)
        ch.set_dialplan(1, "Stasis", ",".join((app, *app_args)))
        await self.emit_channel("ChannelCreated", ch)
        if self.apps.get(app) is not None:
            ch.stasis_app = app
            await self.apps.send_to_app(
                app, build_event("StasisStart", args=list(app_args), channel=self.snapshot(ch))
            )
        return ch

    async def dial_created(self, ch: FakeChannel, caller: FakeChannel | None) -> None:
        """POST /channels/{id}/dial on a created channel: the outcome for its number.

        With a `caller`, the dialed channel's connected line becomes the caller's ID (what the
        far end is shown), as ast_connected_line_copy_from_caller() does.
        """
        outcome = self.outcome_for(ch.dialed)
        resource = ch.name.split("/", 1)[1].rsplit("-", 1)[0]
        if caller is not None:
            ch.connected_name, ch.connected_number = caller.caller_name, caller.caller_number
        await self.dial_event(caller, ch, "", f"{ch.dialed}@{resource}")
        ch.state = "Ringing"
        await self.emit_channel("ChannelStateChange", ch)
        await self.dial_event(caller, ch, "RINGING", "")
        await asyncio.sleep(outcome.ring_seconds)
        if ch.destroyed:
            return  # hung up over ARI while ringing
        if outcome.kind == "answered":
            ch.state = "Up"
            await self.emit_channel("ChannelStateChange", ch)
            await self.dial_event(caller, ch, "ANSWER", "")
            await asyncio.sleep(outcome.talk_seconds)
            if ch.destroyed:
                return  # hung up over ARI during the call
            cause: int = 16
            tech: int | None = None
        else:
            cause, tech = outcome.cause, outcome.tech_cause
            await self.dial_event(caller, ch, dial_status_for(cause), "")
        await self.hangup_request(ch, cause, tech_cause=tech)
        if ch.stasis_app is not None:
            await self.stasis_end(ch)
        await self.destroy(ch, cause, tech)


_PRESENTATION = {
    "caller_presentation": 0,
    "caller_presentation_txt": "Presentation Allowed, Not Screened",
}


def _set_originate_variable(ch: FakeChannel, name: str, value: str) -> None:
    """One entry of an originate/create `variables` object: a function or a variable."""
    if name in ("CALLERID(num)", "CALLERID(number)"):
        ch.caller_number = value
    elif name == "CALLERID(name)":
        ch.caller_name = value
    elif name == "CALLERID(all)":
        ch.caller_name, ch.caller_number = parse_caller_id(value)
    else:
        # Asterisk reads "_VAR" and "__VAR" (inheritance marks) back as VAR.
        ch.variables[name.lstrip("_")] = value


def _substitute(template: str, ch: FakeChannel) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "EXTEN":
            return ch.exten
        if name == "CALLERID(num)":
            return ch.caller_number
        if name == "CALLERID(name)":
            return ch.caller_name
        return ch.variables.get(name, "")

    return _VARIABLE.sub(value, template)
