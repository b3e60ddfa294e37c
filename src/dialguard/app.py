"""The composition root: the one place that builds and wires the adapters and the use cases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from dialguard.config import Settings, profile_raw
from dialguard.decider import Decider, DecisionMetrics, FailOpenSpool, NumberPolicy
from dialguard.gc_pauses import PauseObserver, freeze_startup_objects
from dialguard.policy.feedback import FeedbackPolicy
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DEFAULT_BATCHES, DecisionStore
from dialguard.store.embedded import EmbeddedPostgres
from dialguard.store.migrate import check_schema, migrate

if TYPE_CHECKING:
    from dialguard.broadcast import Broadcast
    from dialguard.gate import Gate
    from dialguard.outcomes import OutcomeTracker
    from dialguard.proxy import AriProxy

log = logging.getLogger(__name__)


class SettingsProfiles:
    """Profiles by name from the settings: the ProfileSource the decider reads.

    ``update`` swaps in the profiles of a reloaded configuration (SIGHUP).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def update(self, settings: Settings) -> None:
        self._settings = settings

    def raw(self, name: str) -> Mapping[str, Any] | None:
        if name not in self._settings.profiles:
            return None
        return profile_raw(self._settings, name)

    def digest(self) -> str:
        """A digest of every profile's values, as parsed (``4h`` and ``240m`` alike): instances
        that decide alike share it."""
        from dataclasses import asdict

        from dialguard.broadcast import profiles_digest

        return profiles_digest({n: asdict(p) for n, p in self._settings.profiles.items()})


@dataclass
class Stores:
    pool: asyncpg.Pool
    decisions: DecisionStore
    campaigns: CampaignStore
    callerids: CallerIdStore
    blacklist: BlacklistStore

    @classmethod
    def on(
        cls,
        pool: asyncpg.Pool,
        feedback: FeedbackPolicy | None = None,
        *,
        decision_batches: int = DEFAULT_BATCHES,
    ) -> Stores:
        policy = feedback or FeedbackPolicy()
        return cls(
            pool,
            DecisionStore(
                pool,
                carrier_block_window=policy.carrier_block_window,
                carrier_block_share=policy.carrier_block_share,
                batches=decision_batches,
            ),
            CampaignStore(pool),
            CallerIdStore(pool),
            BlacklistStore(pool),
        )


def build_decider(
    settings: Settings,
    stores: Stores,
    *,
    metrics: DecisionMetrics | None = None,
    spool: FailOpenSpool | None = None,
    deadline: float | None = None,
    profiles: SettingsProfiles | None = None,
) -> Decider:
    return Decider(
        decisions=stores.decisions,
        campaigns=stores.campaigns,
        profiles=profiles or SettingsProfiles(settings),
        numbers=NumberPolicy(settings.numbers.default_region, settings.numbers.fallback_timezone),
        metrics=metrics,
        deadline=settings.gate.decision_deadline if deadline is None else deadline,
        fail_mode=settings.gate.fail_mode,
        spool=spool,
        time_tolerance=settings.database.clock_tolerance,
    )


@asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[str]:
    """The configured database, or an embedded PostgreSQL in the data directory."""
    if settings.database.url:
        yield settings.database.url
        return
    embedded = EmbeddedPostgres(settings.database.data_dir / "pgdata")
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@asynccontextmanager
async def open_stores(
    settings: Settings,
    *,
    url: str | None = None,
    schema: Literal["migrate", "check", "as_is"] = "check",
) -> AsyncIterator[Stores]:
    """A pool and the stores on it; closes the pool (and any embedded server).

    ``schema``: ``migrate`` brings the database's schema up to this release (``serve`` and the
    demo, at start); ``check`` refuses an older one with :class:`SchemaOutdated` (every other
    command: a schema change may stop the instances still running the previous release, so it
    happens only when asked for); ``as_is`` leaves it to the caller (``migrate``).
    """
    if url is not None:
        pool = await create_pool(url, max_size=settings.database.pool_size)
        try:
            if schema == "migrate":
                await migrate(pool)
            elif schema == "check":
                await check_schema(pool)
            yield Stores.on(
                pool, settings.feedback, decision_batches=settings.database.decision_batches
            )
        finally:
            await pool.close()
        return
    async with (
        database_url(settings) as found,
        open_stores(settings, url=found, schema=schema) as stores,
    ):
        yield stores


def build_proxy(settings: Settings, decider: Decider, outcomes: OutcomeTracker) -> AriProxy:
    """The ARI proxy for dialers, on ``proxy.listen``, forwarding to ``ari.url``."""
    import re

    from dialguard.proxy import AriProxy, ProxyConfig

    proxy = settings.proxy
    assert proxy.listen is not None and proxy.username and proxy.password  # config checks it
    return AriProxy(
        ProxyConfig(
            listen=proxy.listen,
            username=proxy.username,
            password=proxy.password,
            trunk_patterns=tuple(re.compile(p) for p in proxy.trunk_patterns),
            campaign_variable=proxy.campaign_variable,
            ari_url=settings.ari.url,
            ari_username=settings.ari.username,
            ari_password=settings.ari.password,
            trunks=settings.ari.trunks,
        ),
        decider,
        outcomes,
    )


# -- the service -------------------------------------------------------------------------------


class Service:
    """Everything `dialguard serve` runs, started and stopped in order.

    Start: migrate, metrics, admin API, spool write-back, then the ARI listener, whose connect
    hook subscribes to the trunks and reconciles parked channels before readiness turns on.
    Stop (SIGTERM/SIGINT): close the ARI websocket first (new calls then fail closed in the
    dialplan), finish decisions in flight, flush the spool, close the servers and the pool.
    """

    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        *,
        drain_timeout: float = 10.0,
        housekeeping_interval: float = 15.0,
    ) -> None:
        import aiohttp
        from prometheus_client import CollectorRegistry

        from dialguard import __version__
        from dialguard.ari.client import AriClient
        from dialguard.ari.listener import EventListener
        from dialguard.feedback import Feedback
        from dialguard.gate import HANDLED_EVENTS, Gate, GateConfig
        from dialguard.metrics import InstanceMetrics, Metrics
        from dialguard.outcomes import OutcomeTracker, StoreOutcomeSink
        from dialguard.spool import Spool
        from dialguard.store.complaints import ComplaintStore
        from dialguard.store.decisions import insert_spooled
        from dialguard.tasks import Supervisor, TaskSet

        self.settings = settings
        self.stores = stores
        self._drain_timeout = drain_timeout
        self._housekeeping_interval = housekeeping_interval
        self.registry = CollectorRegistry()
        self.metrics = Metrics(
            self.registry, per_callerid=settings.metrics.per_callerid, build_version=__version__
        )
        stores.decisions.observe_batches(self.metrics.decision_batch)
        self.gc_pauses = PauseObserver(self.metrics.gc_pause)
        self.tasks = TaskSet()
        self.supervisor = Supervisor(self.metrics.background_error)
        self.spool = Spool(
            settings.gate.spool_dir,
            lambda rows: insert_spooled(stores.pool, rows),
            on_error=self.metrics.background_error,
            write_back_outcomes=lambda outcomes: self.outcome_sink.write_back(outcomes),
        )
        self.outcome_sink = StoreOutcomeSink(
            stores.decisions,
            self.metrics,
            on_error=self.metrics.background_error,
            spool=self.spool,
        )
        self.complaints = ComplaintStore(stores.pool)
        self.feedback = Feedback(
            complaints=self.complaints,
            policy=settings.feedback,
            default_region=settings.numbers.default_region,
            metrics=self.metrics,
        )
        self.profiles = SettingsProfiles(settings)
        self.decider = build_decider(
            settings, stores, metrics=self.metrics, spool=self.spool, profiles=self.profiles
        )
        self._session = aiohttp.ClientSession()
        gate = settings.gate
        # In broadcast mode each instance holds an application of its own.
        app_name = settings.ari.app
        subscribe_all = settings.ari.subscribe_all
        if gate.mode == "broadcast":
            app_name = f"{settings.ari.app}-{gate.instance_id}"
            # Without subscribeAll, ARI lists the channels parked in an application under it
            # (GET /applications/{app}), which is how a takeover finds a dead instance's calls.
            subscribe_all = False
        self.ari = AriClient(
            settings.ari.url, settings.ari.username, settings.ari.password, app_name
        )
        self.outcomes = OutcomeTracker(self.outcome_sink, self.metrics, self.tasks.spawn)
        self.gate = Gate(
            GateConfig(
                app=app_name,
                trunks=settings.ari.trunks,
                allow_label=gate.allow_label,
                deny_cause=gate.deny_cause,
                deny_label=gate.deny_label,
                campaign_from=gate.campaign_from,
                destination_from=gate.destination_from,
                enforce_gate=gate.enforce_gate,
                follow_allowed_channels=not subscribe_all,
                events=HANDLED_EVENTS | {"CallBroadcast"},
            ),
            self.decider,
            self.ari,
            self.outcomes,
            self.tasks,
            self.metrics,
            spool=self.spool,
        )
        self.instance_metrics = InstanceMetrics(
            self.registry,
            mode=gate.mode,
            ready=lambda: self.readiness()[0],
            background_error=self.metrics.background_error,
        )
        self.broadcast: Broadcast | None = None
        events: Broadcast | Gate = self.gate
        if gate.mode == "broadcast":
            from dialguard.broadcast import Broadcast, BroadcastConfig
            from dialguard.store.instances import InstanceStore

            self.broadcast = events = Broadcast(
                BroadcastConfig(app=app_name, instance_id=gate.instance_id),
                self.gate,
                self.ari,
                InstanceStore(stores.pool),
                self.tasks,
                self.profiles.digest,
                self.instance_metrics,
            )
        self.listener = EventListener(
            settings.ari.url,
            settings.ari.username,
            settings.ari.password,
            app_name,
            on_event=events.on_event,
            on_connect=events.on_connect,
            on_disconnect=events.on_disconnect,
            subscribe_all=subscribe_all,
            session=self._session,
            types=self.gate.events,
            on_received=self.metrics.ari_event,
        )
        self.proxy: AriProxy | None = None
        if settings.proxy.listen is not None:
            self.proxy = build_proxy(settings, self.decider, self.outcomes)
        self._runners: list[Any] = []

    def reload_profiles(self, config_path: Path | None) -> bool:
        """Re-read the configuration and apply its profiles to the next decisions.

        Only profiles change without a restart; a broken file leaves the running ones in place.
        """
        from dialguard.config import ConfigError, load_settings

        try:
            fresh = load_settings(config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: config: %s", problem)
            return False
        self.profiles.update(fresh)
        self.decider.forget()
        log.info("profiles reloaded from %s", fresh.source)
        return True

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        if self.broadcast is not None:
            return self.broadcast.ready, self.broadcast.status()
        return self.gate.ready, self.gate.status()

    async def start(self) -> None:
        from aiohttp import web

        from dialguard.api.health import add_health_routes
        from dialguard.metrics_http import make_metrics_app
        from dialguard.store.errors import StoreUnavailable

        with contextlib.suppress(StoreUnavailable):
            # The database's clock, for the first decisions' pure checks (later ones keep it).
            await self.decider.sync_clock()
        metrics_app = make_metrics_app(self.registry)
        api_app = self.build_api()
        add_health_routes(api_app, self.readiness)
        for app, (host, port) in (
            (metrics_app, self.settings.metrics.listen),
            (api_app, self.settings.api.listen),
        ):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, host, port).start()
        if self.proxy is not None:
            await self.proxy.start()
        self.gc_pauses.install()
        self.supervisor.start("spool_replay", self.spool.write_back_forever)
        self.supervisor.start("housekeeping", self._housekeep)
        if self.broadcast is not None:
            self.supervisor.start("instances", self.broadcast.run)
        await self.listener.start()
        log.info(
            "dialguard serving: API %s:%s, metrics %s:%s, ARI %s",
            *self.settings.api.listen,
            *self.settings.metrics.listen,
            self.settings.ari.url,
        )

    def build_api(self) -> Any:
        """The admin API application, wired to the decider, the stores and the use cases."""
        from dialguard.admin import Audit, CallerIds, Campaigns
        from dialguard.api.routes import ApiDeps, build_api_app
        from dialguard.bulk_numbers import BulkNumbers
        from dialguard.decider import TimeRefused
        from dialguard.scrub import Scrubber
        from dialguard.store.errors import Conflict, InvalidValue, NotFound, StoreUnavailable
        from dialguard.store.health import HealthStore
        from dialguard.store.scrub import ScrubStore

        pool, numbers, policy = self.stores.pool, self.settings.numbers, self.settings.feedback
        deps = ApiDeps(
            decider=self.decider,
            audit=Audit(pool, self.complaints),
            feedback=self.feedback,
            scrub=Scrubber(
                store=ScrubStore(pool),
                profiles=self.decider,
                callerids=self.stores.callerids,
                campaigns=self.stores.campaigns,
                numbers=BulkNumbers(numbers.default_region, numbers.fallback_timezone),
                default_region=numbers.default_region,
            ),
            blacklist=self.stores.blacklist,
            callerids=CallerIds(self.stores.callerids, HealthStore(pool), policy),
            campaigns=Campaigns(self.stores.campaigns, self.profiles, self.decider.forget),
            default_region=numbers.default_region,
            token=self.settings.api.token,
            max_body=self.settings.api.max_body,
            errors={
                NotFound: (404, "not_found"),
                Conflict: (409, "conflict"),
                StoreUnavailable: (503, "store_unavailable"),
                TimeRefused: (400, "time_refused"),
                InvalidValue: (400, "invalid_value"),
            },
        )
        return build_api_app(deps)

    async def stop(self) -> None:
        if self.proxy is not None:
            # First: dialers get no new originations in while the decisions drain.
            await self.proxy.stop()
        await self.listener.stop()
        self.gate.on_disconnect()
        if not await self.gate.drain(self._drain_timeout):
            log.error("stopping with decisions still in flight after %.0f s", self._drain_timeout)
        await self.gate.close()
        await self.decider.drain(2.0)
        await self.tasks.drain(2.0)
        await self.tasks.cancel_all()
        await self.supervisor.stop()
        if self.broadcast is not None:
            # The others take over whatever this instance still holds.
            await self.broadcast.stop()
        await self.spool.stop()
        # A last write-back if the database is there; bounded, so a stuck one cannot hold up
        # the stop (what is left stays on disk for the next start).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._drain_timeout):
                await self.spool.flush()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self.gc_pauses.remove()
        await self.ari.close()
        await self._session.close()

    async def _housekeep(self) -> None:
        """Expire stale outcome tracking, refresh the caller-ID gauges, prune old decisions.

        Each step's error is logged and counted, and the next step and the next round run all
        the same; the supervisor restarts the loop should it die anyway.
        """
        loop = asyncio.get_running_loop()
        next_prune = 0.0
        while True:
            for step in (self._expire_outcomes, self._refresh_gauges, self._settle_calls_up):
                await self._housekeeping_step(step)
            due = self.settings.database.retention is not None and loop.time() >= next_prune
            if due and await self._housekeeping_step(self._prune):
                next_prune = loop.time() + 3600
            await asyncio.sleep(self._housekeeping_interval)

    async def _housekeeping_step(self, step: Callable[[], Awaitable[None]]) -> bool:
        from dialguard.store.errors import StoreUnavailable

        try:
            await step()
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:
            log.warning("housekeeping: %s waits for the database: %s", step.__name__, exc)
        except Exception:
            log.exception("housekeeping: %s failed; carrying on", step.__name__)
        else:
            return True
        self.metrics.background_error("housekeeping")
        return False

    async def _expire_outcomes(self) -> None:
        self.outcomes.expire()

    async def _settle_calls_up(self) -> None:
        # Calls written back from the spool after the connect, or left by anything else that
        # was not listening, are squared with Asterisk's channels each round too.
        await self.gate.check_calls_up()

    async def _refresh_gauges(self) -> None:
        self.metrics.set_callerid_states(await self.stores.callerids.state_counts())

    async def _prune(self) -> None:
        from datetime import UTC, datetime, timedelta

        from dialguard.store.decisions import prune

        retention = self.settings.database.retention
        assert retention is not None
        cutoff = datetime.now(UTC) - timedelta(seconds=retention)
        removed = await prune(self.stores.pool, cutoff)
        if removed:
            log.info("pruned %d decisions older than %s", removed, cutoff)


async def serve(
    settings: Settings, *, config_path: Path | None = None, stop: asyncio.Event | None = None
) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); SIGHUP reloads the profiles."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with open_stores(settings, schema="migrate") as stores:
        service = Service(settings, stores)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, service.reload_profiles, config_path)
        try:
            await service.start()
        except OSError as exc:
            await service.stop()
            raise StartupError(f"cannot listen: {exc.strerror or exc}") from exc
        # What start-up loaded lives as long as the process: out of the collector's way.
        log.debug("froze %d start-up objects", freeze_startup_objects())
        try:
            await stop.wait()
            log.info("stopping: finishing decisions in flight")
        finally:
            await service.stop()
    return 0


class StartupError(Exception):
    """A fatal start-up problem, reported as one line."""
