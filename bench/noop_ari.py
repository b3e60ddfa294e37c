"""A no-op ARI application in a process of its own: the baseline `bench/gate.py --asterisk real`
measures dialguard against.

It holds an application name and answers each StasisStart with `continue?label=...` and nothing
else: no decision, no database, no event subscription beyond the channels in Stasis. It runs on
the stack `dialguard serve` runs on (uvloop, aiohttp's websocket, dialguard's keep-alive ARI
client), so that the CPU it spends per call is the least any Python ARI application on this
machine spends, and dialguard's can be read against it in the same run.

    python bench/noop_ari.py --url http://127.0.0.1:8088/ari --user u --password p --app dialguard
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import aiohttp
import orjson
import uvloop

from dialguard.ari.client import AriClient, basic_auth_header
from dialguard.ari.errors import AriError


async def serve(args: argparse.Namespace) -> None:
    tasks: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def go_on(client: AriClient, channel: str) -> None:
        try:
            await client.continue_in_dialplan(channel, label=args.label)
        except AriError as exc:  # the channel hung up first: nothing to do
            print(f"noop: {channel}: {exc}", file=sys.stderr)

    headers = {"Authorization": basic_auth_header(args.user, args.password)}
    async with (
        AriClient(args.url, args.user, args.password, args.app) as client,
        aiohttp.ClientSession(headers=headers) as session,
        session.ws_connect(
            f"{args.url.rstrip('/')}/events",
            params={"app": args.app, "subscribeAll": "false"},
            max_msg_size=0,
        ) as ws,
    ):

        async def read() -> None:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT or '"StasisStart"' not in message.data:
                    continue
                channel = orjson.loads(message.data)["channel"]["id"]
                task = asyncio.create_task(go_on(client, channel))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        print("ready", flush=True)
        reader = asyncio.create_task(read())
        await stop.wait()
        reader.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the ARI base URL, http://host:port/ari")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--app", default="dialguard")
    parser.add_argument("--label", default="allowed")
    uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
