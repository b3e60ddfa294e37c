"""A real Prometheus for tests: it scrapes the given targets every second and answers PromQL.

Any ``/metrics`` endpoint will do as a target: the tests serve a ``Metrics`` registry from the test
process, and a system test can point it at a running ``dialguard serve`` or ``dialguard demo``.

    async with running_prometheus(["127.0.0.1:9108"], rule_files=[ALERTS]) as prometheus:
        series = await prometheus.query('sum by (rule) (dialguard_decisions_total)')

The context manager owns the process and its temporary directory (configuration, TSDB, log): it
stops the process and removes the directory on exit, and puts the log tail in every error.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

__all__ = [
    "PrometheusError",
    "PrometheusUnavailable",
    "RunningPrometheus",
    "free_port",
    "running_prometheus",
    "sample_value",
    "wait_for",
]

SCRAPE_INTERVAL_SECONDS = 1


class PrometheusUnavailable(RuntimeError):
    """The prometheus binary is not installed."""


class PrometheusError(RuntimeError):
    """Prometheus refused a query or did not get ready; the message carries its explanation."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningPrometheus:
    url: str
    job: str
    session: aiohttp.ClientSession
    log_path: Path

    async def api(self, path: str, **params: str | list[str]) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises PrometheusError with the reason."""
        async with self.session.get(f"{self.url}/api/v1/{path}", params=_flatten(params)) as resp:
            body = await resp.json(content_type=None)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the result series (or a one-element list for a scalar)."""
        data = await self.api("query", query=expr)
        if data["resultType"] in {"scalar", "string"}:
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    async def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = await self.api(f"label/{label}/values", **{"match[]": [match]})
        return values

    async def series(self, match: str) -> list[dict[str, str]]:
        found: list[dict[str, str]] = await self.api("series", **{"match[]": [match]})
        return found

    async def rules(self) -> list[dict[str, Any]]:
        data = await self.api("rules")
        return [rule for group in data["groups"] for rule in group["rules"]]

    async def scrapes(self, instance: str) -> int:
        """How many times the target has been scraped within the last minute."""
        result = await self.query(
            f'count_over_time(up{{job="{self.job}", instance="{instance}"}}[1m])'
        )
        return int(float(result[0]["value"][1])) if result else 0

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, seconds: float, what: str, interval: float = 0.2
) -> None:
    """Poll ``condition`` until it holds; PrometheusError after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                if await condition():
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise PrometheusError(f"timed out after {seconds:g} s waiting for {what}") from None


@contextlib.asynccontextmanager
async def running_prometheus(
    targets: Sequence[str],
    *,
    job: str = "dialguard",
    rule_files: Sequence[Path] = (),
    min_scrapes: int = 3,
    startup_seconds: float = 30.0,
    binary: str | None = None,
) -> AsyncIterator[RunningPrometheus]:
    """Start Prometheus on a free loopback port, scraping ``targets`` (host:port) every second.

    Yields once Prometheus is ready and has scraped the first target ``min_scrapes`` times, so
    ``rate()`` over a short window already has samples.
    """
    binary = binary or shutil.which("prometheus")
    if binary is None:
        raise PrometheusUnavailable("the prometheus binary is not on PATH")
    with tempfile.TemporaryDirectory(prefix="dialguard-prometheus-") as tmp:
        workdir = Path(tmp)
        config_path = workdir / "prometheus.yml"
        interval = f"{SCRAPE_INTERVAL_SECONDS}s"
        config = {
            "global": {
                "scrape_interval": interval,
                # Prometheus refuses a timeout longer than the interval.
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
        config_path.write_text(yaml.safe_dump(config))
        port = free_port()
        log_path = workdir / "prometheus.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                prometheus = RunningPrometheus(f"http://127.0.0.1:{port}", job, session, log_path)
                try:
                    await _wait_ready(prometheus, process, startup_seconds)
                    await wait_for(
                        lambda: _scraped(prometheus, targets[0], min_scrapes),
                        seconds=startup_seconds,
                        what=f"{min_scrapes} scrapes of {targets[0]}",
                    )
                except PrometheusError as exc:
                    tail = prometheus.log_tail()
                    raise PrometheusError(f"{exc}\n--- prometheus log ---\n{tail}") from exc
                yield prometheus
        finally:
            await _stop(process)


async def _wait_ready(
    prometheus: RunningPrometheus, process: asyncio.subprocess.Process, seconds: float
) -> None:
    async def ready() -> bool:
        if process.returncode is not None:
            raise PrometheusError(f"prometheus exited with status {process.returncode}")
        try:
            async with prometheus.session.get(f"{prometheus.url}/-/ready") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(ready, seconds=seconds, what="prometheus to get ready")


async def _scraped(prometheus: RunningPrometheus, instance: str, count: int) -> bool:
    return await prometheus.scrapes(instance) >= count


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout=10)
    except TimeoutError:
        process.kill()
        await process.wait()


def _flatten(params: dict[str, str | list[str]]) -> list[tuple[str, str]]:
    return [
        (key, value)
        for key, values in params.items()
        for value in (values if isinstance(values, list) else [values])
    ]


def sample_value(series: dict[str, Any]) -> float:
    """The value of one instant-query result (Prometheus writes NaN and +Inf as float() reads)."""
    return float(series["value"][1])
