"""A real Asterisk (22.7+) for tests and benchmarks, configured from the project's own files.

`RealAsterisk` starts the Asterisk found in the folder named by ``DIALGUARD_TEST_ASTERISK`` (the
unpacked tree with ``sbin/``, ``lib/``, ``etc/``, ``var/``; ``scripts/setup`` unpacks the shared
22.10.1 build into ``.cache/asterisk/asterisk``) with a run folder of its own, and a sipp UAS
that plays the carrier. The configuration is composed from ``asterisk-config/``:

- ``extensions.conf`` ``#include``s the shipped dialplan itself, so the tests exercise
  ``[dialguard-out]`` as operators install it;
- ``ari.conf`` ``#include``s the shipped file (its user and password are the ones used);
- ``http.conf``, ``pjsip.conf`` and ``rtp.conf`` are the shipped files with only what must
  vary replaced (address and port of the HTTP server, the SIP transport and the carrier's
  contact); each replaced line must be found, so a change to the shipped files fails loudly.

Network. The SIP stack (pjproject) opens UDP sockets on every interface, so as root Asterisk
and sipp run in a private network namespace (``ip netns add``) joined to the host by a veth
pair with a /30 of link-local addresses: Asterisk's HTTP server listens on the namespace's
end, which the test process, ``dialguard serve`` and the benchmark reach directly; SIP, RTP and
sipp stay on the namespace's loopback. Nothing is reachable from outside the host, no relay
sits in the measured path, and deleting the namespace removes the link. Without root
Asterisk runs in the host's network on 127.0.0.1 without the SIP stack (``sip`` is False):
calls are gated, but ``Dial(PJSIP/...)`` finds no channel driver and no carrier exists.

The carrier (sipp, see ``_carrier_scenario``) reads what to do from the last three digits of
the dialled number; `carrier_number` builds such numbers.

    async with RealAsterisk.from_env() as asterisk:
        call = await asterisk.originate_outbound("2122641203", "2125550100", campaign="spring")
        destroyed = await asterisk.events.wait_for_event("ChannelDestroyed", call.stasis_id)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from dialguard.processes import alive
from dialguard.testing.polling import poll_until

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_VAR = "DIALGUARD_TEST_ASTERISK"
# The project's asterisk-config/ (src/dialguard/testing/ -> the repository root).
SHIPPED_CONFIG = Path(__file__).resolve().parents[3] / "asterisk-config"
# The ARI application the harness's own websocket holds: it records every event
# (subscribeAll) and parks the dialer's half of each originated call.
OBSERVER_APP = "dg-observer"
SIP_PORT = 5060
CARRIER_PORT = 5070
HTTP_PORT = 8088

# The carrier's refusals: sipp needs each response code written out in the scenario.
CARRIER_REFUSALS = {
    403: "Forbidden",
    404: "Not Found",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    503: "Service Unavailable",
    603: "Decline",
    607: "Unwanted",
    608: "Rejected",
}


def _carrier_scenario() -> str:
    tests = "\n".join(
        f'      <test assign_to="is{code}" variable="n" compare="equal" value="{code}"/>'
        for code in CARRIER_REFUSALS
    )
    jumps = "\n".join(
        f'  <nop hide="true" test="is{code}" next="refuse{code}"/>' for code in CARRIER_REFUSALS
    )
    refusals = "\n".join(
        f"""  <label id="refuse{code}"/>
  <send>
    <![CDATA[

      SIP/2.0 {code} {reason}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK" next="done"/>
"""
        for code, reason in CARRIER_REFUSALS.items()
    )
    return (
        _SCENARIO_HEAD.replace("@TESTS@", tests).replace("@JUMPS@", jumps)
        + refusals
        + '  <label id="done"/>\n  <nop hide="true"/>\n</scenario>\n'
    )


_SCENARIO_HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!--
  The carrier, played by sipp (UAS). What it does with a call is written in the last three
  digits of the dialled number: 2NN answers, then hangs up (BYE) after NN tenths of a second;
  a code of CARRIER_REFUSALS (486 busy, 403/603/607/608 rejections, 503 ...) refuses with it.
  sipp's -aa answers Asterisk's OPTIONS qualify pings with 200.
-->
<scenario name="dialguard test carrier">
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp="INVITE sip:[^@ ]*([0-9][0-9][0-9])@" search_in="msg" check_it="true"
            assign_to="uri,code"/>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="caller"/>
      <ereg regexp=".*" search_in="hdr" header="To:" check_it="true" assign_to="callee"/>
      <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" check_it="true"
            assign_to="contact"/>
      <todouble assign_to="n" variable="code"/>
      <log message="INVITE for [$uri]"/>
@TESTS@
      <assign assign_to="hold" variable="n"/>
      <subtract assign_to="hold" value="200"/>
      <multiply assign_to="hold" value="100"/>
    </action>
  </recv>

  <send>
    <![CDATA[

      SIP/2.0 100 Trying
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>

@JUMPS@

  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>

  <send retrans="500">
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=carrier 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>

  <recv request="ACK" crlf="true"/>

  <pause variable="hold"/>

  <send retrans="500">
    <![CDATA[

      BYE [$contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: [$callee];tag=[pid]SIPpTag01[call_number]
      To: [$caller]
      [last_Call-ID:]
      CSeq: 1 BYE
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <recv response="200" crlf="true" next="done"/>

"""


def carrier_number(line: str, sip_code: int = 200, *, hold: float = 0.0) -> str:
    """A destination the sipp carrier treats as asked: `line` (the first seven digits of a
    ten-digit NANP number) then three digits that say what the carrier does.

    200 answers and hangs up after `hold` seconds (0 to 9.9, in tenths); a code of
    CARRIER_REFUSALS refuses with it.
    """
    if len(line) != 7 or not line.isdigit():
        raise ValueError("line must be seven digits")
    if sip_code == 200:
        tenths = round(hold * 10)
        if not 0 <= tenths <= 99:
            raise ValueError("hold must be between 0 and 9.9 seconds")
        return f"{line}2{tenths:02d}"
    if sip_code not in CARRIER_REFUSALS:
        raise ValueError(
            f"the carrier answers (200) or refuses with one of {list(CARRIER_REFUSALS)}"
        )
    return f"{line}{sip_code}"


def asterisk_home_from_env() -> Path | None:
    """The Asterisk tree named by DIALGUARD_TEST_ASTERISK, or None when unset."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value) if value else None


def skip_reason() -> str | None:
    """Why the real-Asterisk tests cannot run here, or None when they can."""
    home = asterisk_home_from_env()
    if home is None:
        return (
            f"{ENV_VAR} is not set: point it at an unpacked Asterisk 22.7+ tree"
            " (scripts/setup unpacks one into .cache/asterisk/asterisk)"
        )
    if not (home / "sbin" / "asterisk").is_file():
        return f"{ENV_VAR}={home} holds no sbin/asterisk"
    return None


def can_use_sip() -> bool:
    """SIP needs a private network namespace (root, `ip`) and sipp."""
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("sipp") is not None


def shipped_ari_credentials(config_dir: Path = SHIPPED_CONFIG) -> tuple[str, str]:
    """The (username, password) of the user section in the shipped ari.conf."""
    section: str | None = None
    users: dict[str, dict[str, str]] = {}
    for raw in (config_dir / "ari.conf").read_text().splitlines():
        line = raw.split(";", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            users[section] = {}
        elif "=" in line and section is not None:
            key, _, value = line.partition("=")
            users[section][key.strip()] = value.strip()
    for name, values in users.items():
        if values.get("type") == "user" and values.get("password_format", "plain") == "plain":
            return name, values.get("password", "")
    raise ValueError("the shipped ari.conf has no user with a plain password")


def _replaced(text: str, replacements: dict[str, str], name: str) -> str:
    """`text` with each whole line in `replacements` replaced; each must be there."""
    lines = text.splitlines()
    for old, new in replacements.items():
        hits = [i for i, line in enumerate(lines) if line.strip() == old]
        if not hits:
            raise ValueError(f"asterisk-config/{name} no longer has the line {old!r}")
        for i in hits:
            lines[i] = new
    return "\n".join(lines) + "\n"


# -- what the harness observes --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObservedEvent:
    received: float  # time.perf_counter() when it arrived
    type: str
    channel_id: str | None
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OutboundCall:
    """A call originated into [dialguard-out]: the dialer's half (;1) and the half that runs
    the dialplan and enters Stasis (;2), whose id dialguard sees."""

    dialer_id: str
    stasis_id: str
    destination: str


class EventLog:
    """Every event the observer application heard (subscribeAll), in arrival order."""

    def __init__(self) -> None:
        self.all: list[ObservedEvent] = []
        # The same events by channel: a soak polls one channel's among hundreds of thousands.
        self._by_channel: dict[str | None, list[ObservedEvent]] = {}

    def add(self, event: dict[str, Any]) -> None:
        channel = event.get("channel") or event.get("peer")
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        received = time.perf_counter()
        observed = ObservedEvent(received, str(event.get("type")), channel_id, event)
        self.all.append(observed)
        self._by_channel.setdefault(channel_id, []).append(observed)

    def of(self, type: str | None = None, channel_id: str | None = None) -> list[ObservedEvent]:
        events = self.all if channel_id is None else self._by_channel.get(channel_id, [])
        return [e for e in events if type is None or e.type == type]

    def variables(self, channel_id: str) -> dict[str, str]:
        """The channel variables set on a channel, last value wins (ChannelVarset)."""
        return {
            str(e.event.get("variable")): str(e.event.get("value"))
            for e in self.of("ChannelVarset", channel_id)
        }

    def dialplan_apps(self, channel_id: str) -> list[tuple[str, str]]:
        """The dialplan applications a channel ran, with their data, in order."""
        return [
            (str(e.event.get("dialplan_app")), str(e.event.get("dialplan_app_data")))
            for e in self.of("ChannelDialplan", channel_id)
        ]

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 10.0,  # noqa: ASYNC109
        interval: float = 0.01,
    ) -> T:
        """Poll `predicate` until it returns something truthy; return it. TimeoutError after."""
        return await poll_until(predicate, timeout, interval)

    async def wait_for_event(
        self,
        type: str,
        channel_id: str | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        found = await self.wait_for(lambda: self.of(type, channel_id), timeout=timeout)
        return found[0].event


# -- the network namespace ------------------------------------------------------------------

_instances = itertools.count()


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {err.decode().strip() or proc.returncode}")
    return out.decode()


class NetworkNamespace:
    """A private network namespace joined to the host by a veth pair (root only).

    The host's end is `host_address`, the namespace's `address`, a /30 of 169.254.0.0/16 that
    no interface of the host uses yet. `delete()` removes the namespace and, with it, the link.
    """

    def __init__(self) -> None:
        # The creating process's id is in the names (at most 13 characters, under the 15 of an
        # interface name): a namespace whose creator died without cleaning up (a test run
        # killed outright) is recognised, and the next one removes it.
        tag = f"{os.getpid()}x{next(_instances) % 100}"
        self.name = f"dg-{tag}"
        self._host_if = f"dg{tag}h"
        self._ns_if = f"dg{tag}n"
        self.address = ""
        self.host_address = ""

    async def create(self) -> None:
        await remove_orphaned_namespaces()
        used = await _run("ip", "-o", "-4", "addr", "show")
        for _ in range(64):
            block = int.from_bytes(os.urandom(2), "big") % 16000 + 64  # 169.254.0.0/24 left out
            third, fourth = divmod(block * 4, 256)
            host, ns = f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"
            if f" {host}/" not in used and f" {ns}/" not in used:
                break
        else:
            raise RuntimeError("no free 169.254.x.y/30 for the test network namespace")
        await _run("ip", "netns", "add", self.name)
        try:
            await _run(
                "ip", "link", "add", self._host_if, "type", "veth",
                "peer", "name", self._ns_if, "netns", self.name,
            )  # fmt: skip
            await _run("ip", "addr", "add", f"{host}/30", "dev", self._host_if)
            await _run("ip", "link", "set", self._host_if, "up")
            inside = ("ip", "netns", "exec", self.name, "ip")
            await _run(*inside, "link", "set", "lo", "up")
            await _run(*inside, "addr", "add", f"{ns}/30", "dev", self._ns_if)
            await _run(*inside, "link", "set", self._ns_if, "up")
        except BaseException:
            await self.delete()
            raise
        self.address, self.host_address = ns, host

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    async def delete(self) -> None:
        with contextlib.suppress(RuntimeError):
            await _run("ip", "link", "delete", self._host_if)
        with contextlib.suppress(RuntimeError):
            await _run("ip", "netns", "delete", self.name)


_NAMESPACE = re.compile(r"dg-(\d+)x\d+")


async def remove_orphaned_namespaces() -> None:
    """Delete the namespaces of harnesses whose process is gone, with what still runs in them
    (their Asterisk and sipp) and their host-side link."""
    for line in (await _run("ip", "netns", "list")).splitlines():
        name = line.split(" ", 1)[0]
        found = _NAMESPACE.fullmatch(name)
        if found is None or alive(int(found.group(1))):
            continue
        log.warning("removing the network namespace %s left by a process that is gone", name)
        with contextlib.suppress(RuntimeError):
            for pid in (await _run("ip", "netns", "pids", name)).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(RuntimeError):
            await _run("ip", "link", "delete", f"dg{name[3:]}h")
        with contextlib.suppress(RuntimeError):
            await _run("ip", "netns", "delete", name)


# -- Asterisk -------------------------------------------------------------------------------


@dataclass
class _Processes:
    asterisk: asyncio.subprocess.Process | None = None
    sipp: asyncio.subprocess.Process | None = None
    extra: list[asyncio.subprocess.Process] = field(default_factory=list)


class RealAsterisk:
    """One Asterisk process (and, with `sip`, a sipp carrier) in a run folder of its own.

    Lifecycle: `await start()` composes the configuration, starts the processes, waits until
    ARI answers and opens the observer websocket; `await stop()` closes the websocket, stops
    sipp and Asterisk (SIGTERM, then SIGKILL after 10 s), deletes the namespace and the run
    folder (kept with `keep_run_dir`, for reading its log). `async with` does both. The
    instance owns every process and file it makes.

    `sip`: None picks SIP when possible (root, `ip`, sipp), False runs without the SIP stack.
    `extra_dialplan` is appended to the composed extensions.conf (after the shipped file).
    `verbose` is Asterisk's verbosity (3 logs each dialplan step to messages.log).
    `observe`: False opens no observer websocket (the benchmark reads events itself); calls
    originated by `originate_outbound` then need `dialer_app` connected by the caller.
    """

    def __init__(
        self,
        home: Path,
        *,
        sip: bool | None = None,
        config_dir: Path = SHIPPED_CONFIG,
        extra_dialplan: str = "",
        verbose: int = 3,
        observe: bool = True,
        keep_run_dir: bool = False,
    ) -> None:
        self.home = home
        self._sip_chosen = sip is not None
        self.sip = can_use_sip() if sip is None else sip
        # Why there is no SIP stack, when there is none (for skip messages).
        self.without_sip_because = "" if self.sip else "the SIP stack needs root, `ip` and sipp"
        if self.sip and not can_use_sip():
            raise RuntimeError("SIP needs root, `ip` and sipp")
        self._config_dir = config_dir
        self._extra_dialplan = extra_dialplan
        self._verbose = verbose
        self._observe = observe
        self._keep_run_dir = keep_run_dir
        self.username, self.password = shipped_ari_credentials(config_dir)
        # The shipped ari.conf keeps no password: it includes ari-password.conf (written below).
        self._ari_password_file = not self.password
        if self._ari_password_file:
            self.password = secrets.token_hex(12)
        self.run_dir = Path(tempfile.mkdtemp(prefix="dialguard-asterisk-"))
        self._namespace: NetworkNamespace | None = None
        self._procs = _Processes()
        self.host = "127.0.0.1"
        self.port = 0
        self.events = EventLog()
        self._session: aiohttp.ClientSession | None = None
        self._observer: aiohttp.ClientWebSocketResponse | None = None
        self._observer_task: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls, **kwargs: Any) -> RealAsterisk:
        reason = skip_reason()
        if reason is not None:
            raise RuntimeError(reason)
        home = asterisk_home_from_env()
        assert home is not None
        return cls(home, **kwargs)

    # -- addresses ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The ARI base URL, reachable from the host: "http://ADDRESS:PORT/ari"."""
        return f"http://{self.host}:{self.port}/ari"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(self.username, self.password)}

    @property
    def asterisk_pid(self) -> int:
        if self._procs.asterisk is None:
            raise RuntimeError("Asterisk is not running")
        return self._procs.asterisk.pid

    @property
    def sipp_pid(self) -> int | None:
        return self._procs.sipp.pid if self._procs.sipp is not None else None

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log" / "messages.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> RealAsterisk:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            if self.sip:
                namespace = NetworkNamespace()
                try:
                    await namespace.create()
                except RuntimeError as exc:
                    if self._sip_chosen:
                        raise
                    # A container without the rights for network namespaces: go on without SIP.
                    log.warning("no network namespace (%s): running without the SIP stack", exc)
                    self.sip, self.without_sip_because = False, f"no network namespace: {exc}"
                else:
                    self._namespace = namespace
                    self.host, self.port = namespace.address, HTTP_PORT
            if not self.sip:
                self.host, self.port = "127.0.0.1", _free_port()
            self._compose()
            prefix = self._namespace.exec_prefix() if self._namespace is not None else []
            if self.sip:
                errors = self.run_dir / "log" / "sipp-errors.log"
                sipp = f"sipp -sf {self.run_dir / 'carrier.xml'} -i 127.0.0.1 -p {CARRIER_PORT}"
                sipp += " -mi 127.0.0.1 -aa -nostdin -max_recv_loops 10000 -max_sched_loops 10000"
                sipp += f" -trace_err -error_file {errors}"
                self._procs.sipp = await self._spawn([*prefix, *sipp.split()], "sipp")
            config = self.run_dir / "etc" / "asterisk.conf"
            asterisk = [str(self.home / "sbin" / "asterisk"), "-C", str(config), "-f", "-n"]
            self._procs.asterisk = await self._spawn([*prefix, *asterisk], "asterisk")
            self._session = aiohttp.ClientSession(headers=self.auth_headers)
            await self._wait_until_up()
            if self._observe:
                await self._open_observer()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._observer_task is not None:
            self._observer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._observer_task
            self._observer_task = None
        if self._observer is not None:
            await self._observer.close()
            self._observer = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        for proc in [*self._procs.extra, self._procs.sipp, self._procs.asterisk]:
            if proc is not None:
                await _terminate(proc)
        self._procs = _Processes()
        if self._namespace is not None:
            await self._namespace.delete()
            self._namespace = None
        if not self._keep_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def _spawn(self, argv: list[str], name: str) -> asyncio.subprocess.Process:
        out = (self.run_dir / "log" / f"{name}.out").open("ab")
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.run_dir,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the test, not these
            )
        finally:
            out.close()

    async def _wait_until_up(self, within: float = 30.0) -> None:
        assert self._session is not None and self._procs.asterisk is not None
        needed = [f"{self.base_url}/asterisk/info"]
        if self.sip:
            needed.append(f"{self.base_url}/endpoints/PJSIP/carrier")
        async with asyncio.timeout(within):
            while True:
                if self._procs.asterisk.returncode is not None:
                    out = (self.run_dir / "log" / "asterisk.out").read_text(errors="replace")
                    raise RuntimeError(f"Asterisk exited at start-up: {out[-2000:]}")
                sipp = self._procs.sipp
                if sipp is not None and sipp.returncode is not None:
                    errors = (self.run_dir / "log" / "sipp-errors.log").read_text(errors="replace")
                    raise RuntimeError(f"sipp exited at start-up: {errors[-2000:]}")
                if "Asterisk Ready" in self.log_text() and await self._all_ok(needed):
                    return
                await asyncio.sleep(0.05)

    async def _all_ok(self, urls: Sequence[str]) -> bool:
        assert self._session is not None
        for url in urls:
            try:
                async with self._session.get(url) as resp:
                    if resp.status != 200:
                        return False
            except aiohttp.ClientError:
                return False
        return True

    async def _open_observer(self) -> None:
        assert self._session is not None
        self._observer = await self._session.ws_connect(
            f"{self.base_url}/events",
            params={"app": OBSERVER_APP, "subscribeAll": "true"},
            heartbeat=None,
        )
        self._observer_task = asyncio.create_task(self._read_observer(self._observer))
        # Asterisk announces nothing when an application connects: ask until it is there.
        async with asyncio.timeout(10):
            while True:
                if await self._all_ok([f"{self.base_url}/applications/{OBSERVER_APP}"]):
                    return
                await asyncio.sleep(0.02)

    async def _read_observer(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.events.add(json.loads(message.data))

    # -- configuration --------------------------------------------------------------------------

    def _compose(self) -> None:
        run = self.run_dir
        etc = run / "etc"
        for sub in ("etc", "varlib", "db", "keys/keys", "spool", "run", "log"):
            (run / sub).mkdir(parents=True, exist_ok=True)
        # Asterisk's own sample files (modules.conf, logger.conf, ...) from the tree itself.
        stock = self.home / "etc" / "asterisk"
        if stock.is_dir():
            for item in stock.iterdir():
                if item.is_file():
                    shutil.copy(item, etc / item.name)
        home, shipped = self.home, self._config_dir
        (etc / "asterisk.conf").write_text(
            "[directories]\n"
            f"astetcdir => {etc}\n"
            f"astmoddir => {home}/lib/asterisk/modules\n"
            f"astdatadir => {home}/var/lib/asterisk\n"
            f"astvarlibdir => {run}/varlib\n"
            f"astdbdir => {run}/db\n"
            f"astkeydir => {run}/keys\n"
            f"astagidir => {home}/var/lib/asterisk/agi-bin\n"
            f"astspooldir => {run}/spool\n"
            f"astrundir => {run}/run\n"
            f"astlogdir => {run}/log\n"
            f"astsbindir => {home}/sbin\n"
            "[options]\n"
            f"verbose = {self._verbose}\n"
            "; required inside a network namespace with no ethernet device\n"
            "entityid = 02:00:00:00:00:01\n"
        )
        (etc / "cdr.conf").write_text("[general]\nenable = no\n")
        (etc / "extensions.conf").write_text(
            f'#include "{shipped / "extensions.conf"}"\n\n{self._extra_dialplan}\n'
        )
        (etc / "ari.conf").write_text(f'#include "{shipped / "ari.conf"}"\n')
        if self._ari_password_file:
            (etc / "ari-password.conf").write_text(
                f"[{self.username}](+)\npassword = {self.password}\n"
            )
        (etc / "http.conf").write_text(
            _replaced(
                (shipped / "http.conf").read_text(),
                {
                    "bindaddr = 0.0.0.0": f"bindaddr = {self.host}",
                    "bindport = 8088": f"bindport = {self.port}",
                },
                "http.conf",
            )
        )
        if self.sip:
            (etc / "modules-local.conf").write_text("")
            (etc / "pjsip.conf").write_text(
                _replaced(
                    (shipped / "pjsip.conf").read_text(),
                    {
                        "bind = 0.0.0.0:5060": f"bind = 127.0.0.1:{SIP_PORT}",
                        "contact = sip:sip.carrier.example:5060": (
                            f"contact = sip:127.0.0.1:{CARRIER_PORT}"
                        ),
                        "match = 203.0.113.0/24": "match = 127.0.0.1",
                    },
                    "pjsip.conf",
                )
            )
            (etc / "rtp.conf").write_text((shipped / "rtp.conf").read_text())
            (run / "carrier.xml").write_text(_carrier_scenario())
        else:
            nopjsip = stock / "modules-nopjsip.conf"
            without_sip = nopjsip.read_text() if nopjsip.is_file() else ""
            (etc / "modules-local.conf").write_text(without_sip)
            (etc / "pjsip.conf").write_text("")

    # -- driving calls ---------------------------------------------------------------------------

    async def rest(self, method: str, path: str, **params: Any) -> tuple[int, Any]:
        """One ARI request (path below /ari); the status and the parsed body (None if empty)."""
        assert self._session is not None, "not started"
        query = {k: str(v) for k, v in params.items() if v is not None and k != "json"}
        async with self._session.request(
            method, f"{self.base_url}{path}", params=query, json=params.get("json")
        ) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text.strip() else None)

    async def originate_outbound(
        self,
        destination: str,
        caller_id: str,
        *,
        campaign: str | None = None,
        variables: dict[str, str] | None = None,
        ring_seconds: int = 30,
        dialer_app: str = OBSERVER_APP,
        context: str = "dialguard-out",
    ) -> OutboundCall:
        """A dialer's call through the gate: ARI originate of Local/<destination>@<context>
        ([dialguard-out], or [dialguard-broadcast] for broadcast mode).

        The ;2 half runs [dialguard-out] (its id is chosen here, so it is known before its
        StasisStart); the ;1 half, once answered, waits in `dialer_app`'s Stasis. `campaign`
        becomes the CAMPAIGN variable, which the Local channel hands to the ;2 half.
        """
        token = uuid.uuid4().hex[:16]
        call = OutboundCall(f"dialer-{token}", f"gate-{token}", destination)
        chosen = dict(variables or {})
        if campaign is not None:
            chosen["CAMPAIGN"] = campaign
        status, body = await self.rest(
            "POST",
            "/channels",
            endpoint=f"Local/{destination}@{context}",
            app=dialer_app,
            callerId=f'"Dialer" <{caller_id}>',
            timeout=ring_seconds,
            channelId=call.dialer_id,
            otherChannelId=call.stasis_id,
            json={"variables": chosen} if chosen else None,
        )
        if status != 200:
            raise RuntimeError(f"originate failed: {status} {body}")
        return call

    async def originate_direct_to_trunk(self, destination: str, caller_id: str) -> str:
        """A call straight to the carrier (PJSIP/<destination>@carrier) that skips the
        dialplan gate, as a careless dialer would place it; returns the trunk channel's id."""
        status, body = await self.rest(
            "POST",
            "/channels",
            endpoint=f"PJSIP/{destination}@carrier",
            app=OBSERVER_APP,
            callerId=f'"Dialer" <{caller_id}>',
            timeout=30,
        )
        if status != 200:
            raise RuntimeError(f"originate failed: {status} {body}")
        return str(body["id"])

    async def hangup_all(self) -> None:
        """Hang up every channel (between scenarios)."""
        _, channels = await self.rest("GET", "/channels")
        for channel in channels or []:
            with contextlib.suppress(aiohttp.ClientError):
                await self.rest("DELETE", f"/channels/{channel['id']}")


class TcpRelay:
    """A relay in front of an address: a link the test can cut or freeze.

    It listens on TCP 127.0.0.1 (`start()`) or on a Unix socket (`start(listen_path=...)`),
    and connects to `target_host:target_port`, or to the Unix socket `target_path` when given
    (a PostgreSQL server's, say). `cut()` aborts every connection open through it (both sides
    see a reset, as when a network path dies); new connections pass again. `freeze()` stops
    carrying bytes back on the connections open now: what the client sends still arrives and
    is acted on, but whatever the far side answers is lost to the client until a `cut()` ends
    them. Owns its server and connections; `close()` ends all.
    """

    def __init__(
        self, target_host: str, target_port: int, *, target_path: str | None = None
    ) -> None:
        self._target = (target_host, target_port)
        self._target_path = target_path
        self._server: asyncio.AbstractServer | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._frozen: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, *, listen_path: Path | None = None) -> None:
        if listen_path is not None:
            self._server = await asyncio.start_unix_server(self._accept, path=str(listen_path))
            return
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])

    def url(self, path: str = "/ari") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def connections(self) -> int:
        return len(self._links)

    def freeze(self) -> None:
        for client, _ in self._links:
            self._frozen.add(client)

    def cut(self) -> None:
        for client, upstream in list(self._links):
            for writer in (client, upstream):
                writer.transport.abort()
        self._links.clear()
        self._frozen.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._target_path is not None:
                up_reader, up_writer = await asyncio.open_unix_connection(self._target_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        for source, sink, client_side in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(source, sink, writer if client_side else None))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        client: asyncio.StreamWriter | None,
    ) -> None:
        try:
            while data := await source.read(65536):
                if client is not None and client in self._frozen:
                    continue  # what the server sends is lost on a frozen link
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort() if sink.transport.is_closing() else sink.close()


async def _terminate(proc: asyncio.subprocess.Process, within: float = 10.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), within)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
