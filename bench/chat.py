"""`python -m bench.chat`: chat fan-out to live WebSockets, and what an idle one costs.

Targets on 2 cores: 2,000 clients in 20 group channels of 100 members (each user in one),
connected through the gateway and so spread over both chat replicas, get >= 25,000 message
deliveries per second (250 messages/s, each to its 100 members' connections) with
publish-to-receive p99 <= 100 ms and no delivery missing or doubled; 10,000 authenticated idle
connections cost the chat replicas <= 30 KiB each. By default it offers 260 messages/s: at
exactly 250 the deliveries counted over the window (first send to last delivery) come out a
few dozen below 25,000 per second however fast the stack is, so a pass could never show.

Each message's text is its send time (`time.time_ns()`), so every receiver computes its
latency; each client checks that it got its channel's seqs 1..last exactly once, in order.
The load generator parses only the prefix and the text of a message frame: it shares the
cores with the stack. For the same reason its delivery clients are picows connections
(`--client picows`, the default without `--deflate`), whose frames are parsed in C and handed
over by a callback: at 250 messages/s the websockets client took 40-45 % of a core, about as
much as a chat replica, and was short of CPU, so its late reads inflated the latencies it
measured; `--client websockets` (and `--deflate`) measure with that one.
"""

import argparse
import asyncio
import collections
import json
import math
import os
import resource
import statistics
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from chassis.ports import free_port

from . import chat_procs
from .drain import wait_drained
from .stack import embedded_stack, sign_up

DELIVERY_TARGET = "target >= 25,000/s, p99 <= 100 ms, zero loss"
IDLE_TARGET_KIB = 30
MESSAGE = b'{"type":"message","seq":'
ACK = b'{"type":"ack"'
ERROR = b'{"type":"error"'
TEXT = b'"text":"'
MACHINE = "machine"
OUTSTANDING_MAX = 16  # unacknowledged sends per sender before it skips its turns


# --- users and channels -------------------------------------------------------------------

async def open_channels(base_url: str, groups: list[list[tuple[str, str]]],
                        timeout_s: float = 120.0) -> list[str]:
    """A group channel per list of users, opened by its first; returns the channel ids. The
    chat service learns of new users from their profile.created events: 422 until then."""
    async def one(http: httpx.AsyncClient, i: int, group: list[tuple[str, str]]) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            response = await http.post(
                "/api/chat/channels", headers={"Authorization": f"Bearer {group[0][0]}"},
                json={"kind": "group", "name": f"bench {i}", "member_ids": [u for _, u in group]})
            if response.status_code != 422 or time.monotonic() > deadline:
                response.raise_for_status()
                return response.json()["id"]
            await asyncio.sleep(0.5)

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        return await asyncio.gather(*(one(http, i, g) for i, g in enumerate(groups)))


# --- connections --------------------------------------------------------------------------

class Light(WSListener):
    """A delivery client's connection on picows: each text frame goes to `on_text` as it is
    parsed, with no task, queue or await per frame in between."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.on_text: Callable[[bytes], None] = self._until_ready
        self.on_close: Callable[[str], None] = lambda code: None
        self.ready = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.on_text(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed ({self.close_code}) before ready"))
        self.on_close(str(self.close_code or "no close frame"))

    def _until_ready(self, raw: bytes) -> None:
        if not self.ready.done() and json.loads(raw).get("type") == "ready":
            self.ready.set_result(None)

    async def send(self, text: str) -> None:
        if self.transport is None or self.transport.is_disconnected:
            raise ConnectionError("disconnected")
        self.transport.send(WSMsgType.TEXT, text.encode())

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


async def _open_light(url: str, token: str) -> Light:
    transport, light = await ws_connect(Light, url, websocket_handshake_timeout=20)
    transport.send(WSMsgType.TEXT, json.dumps({"type": "auth", "token": token}).encode())
    async with asyncio.timeout(20):
        await light.ready
    return light


async def _open_websockets(url: str, token: str, deflate: bool) -> ClientConnection:
    ws = await connect(url, proxy=None, compression="deflate" if deflate else None,
                       ping_interval=None, open_timeout=20, close_timeout=2,
                       user_agent_header=None)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    async with asyncio.timeout(20):
        while json.loads(await ws.recv()).get("type") != "ready":
            pass
    return ws


async def open_sockets(urls: list[str], tokens: list[str], *, deflate: bool = False,
                       light: bool = False, concurrency: int = 64, give_up_after: int = 20,
                       ) -> tuple[list[Any], list[str]]:
    """An authenticated connection per token (round robin over `urls`), each past `ready`,
    in the tokens' order: websockets connections, with `deflate` asking for
    permessage-deflate as browsers do, or with `light` picows ones (`Light`). If any fails,
    returns those that opened and why others did not; after `give_up_after` failures the
    rest are not tried."""
    limit, failures = asyncio.Semaphore(concurrency), []
    opened: list[Any] = [None] * len(tokens)

    async def one(i: int, token: str) -> None:
        async with limit:
            if len(failures) >= give_up_after:
                return
            url = urls[i % len(urls)]
            try:
                opened[i] = await (_open_light(url, token) if light
                                   else _open_websockets(url, token, deflate))
            except (OSError, TimeoutError, WebSocketException, WSError, ValueError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:160])

    await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))
    return [ws for ws in opened if ws is not None], failures


async def close_all(sockets: list[Any]) -> None:
    for start in range(0, len(sockets), 500):
        await asyncio.gather(*(ws.close() for ws in sockets[start:start + 500]),
                             return_exceptions=True)


class Client:
    """One member's live connection and what it has received of its channel in this step."""

    __slots__ = ("ws", "channel", "base", "counts", "last", "reordered", "outstanding")

    def __init__(self, ws: ClientConnection | Light, channel: str) -> None:
        self.ws, self.channel, self.outstanding = ws, channel, 0
        self.reset(0)

    def reset(self, base: int) -> None:
        self.base, self.counts, self.last, self.reordered = base, bytearray(256), 0, 0

    def receive(self, seq: int) -> None:
        seq -= self.base
        if seq < 1:
            self.reordered += 1
            return
        counts = self.counts
        if seq >= len(counts):
            counts.extend(bytes(seq + 256 - len(counts)))
        if seq <= self.last:
            self.reordered += 1
        else:
            self.last = seq
        if counts[seq] < 255:
            counts[seq] += 1

    def missing(self, last: int) -> list[int]:
        """The seqs of 1..last of this step not received, as the channel numbers them."""
        return [self.base + seq for seq in range(1, last + 1)
                if seq >= len(self.counts) or not self.counts[seq]]

    def loss(self, last: int) -> tuple[int, int]:
        """(missing, duplicated) deliveries of seqs 1..last of this step."""
        seen = self.counts[1:last + 1]
        received = len(seen) - seen.count(0)
        return seen.count(0) + last - len(seen), sum(self.counts) - received


@dataclass
class Tally:
    """One rate step, as the clients saw it."""

    rate: float
    started_ns: int = field(default_factory=time.time_ns)
    latencies_ns: array = field(default_factory=lambda: array("q"))
    ack_ns: array = field(default_factory=lambda: array("q"))
    last_delivery_ns: int = 0
    sent: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


class Fanout:
    """The clients, their channels' last seqs, and the step being counted."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self.last_seq = {c.channel: 0 for c in clients}
        self.tally = Tally(0)
        self.frames = 0
        self.lost: list[str] = []

    def listen(self, client: Client) -> asyncio.Task[None] | None:
        """Count what one connection receives until it closes: a picows connection hands
        each frame over as it comes, a websockets one is read by a task (returned)."""
        if isinstance(client.ws, Light):
            client.ws.on_text = lambda raw: self.heard(client, raw)
            client.ws.on_close = self.lost.append
            return None
        return asyncio.create_task(self._read(client))

    async def _read(self, client: Client) -> None:
        recv = client.ws.recv
        try:
            while True:
                self.heard(client, await recv(decode=False))
        except ConnectionClosed as closed:
            self.lost.append(f"{closed.rcvd.code if closed.rcvd else 'no close frame'}")

    def heard(self, client: Client, raw: bytes) -> None:
        """One frame; only message frames are counted per client."""
        self.frames += 1
        if raw.startswith(MESSAGE):
            now, skip = time.time_ns(), len(MESSAGE)
            comma = raw.index(b",", skip)
            at = raw.index(TEXT, comma) + len(TEXT)
            tally = self.tally
            tally.latencies_ns.append(now - int(raw[at:raw.index(b'"', at)]))
            tally.last_delivery_ns = now
            client.receive(int(raw[skip:comma]))
        elif raw.startswith(ACK):
            frame = json.loads(raw)
            client.outstanding -= 1
            self.tally.ack_ns.append(time.time_ns() - int(frame["message"]["text"]))
            self.last_seq[client.channel] = max(self.last_seq[client.channel], frame["seq"])
        elif raw.startswith(ERROR):
            client.outstanding -= 1
            self.tally.errors.append(raw.decode()[:200])

    async def quiet(self, for_s: float = 1.0, timeout_s: float = 15.0) -> None:
        """Wait until no frame arrives for `for_s` (the presence frames of connecting)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            before = self.frames
            await asyncio.sleep(for_s)
            if self.frames == before:
                return

    async def step(self, rate: float, duration_s: float, senders: list[Client]) -> Tally:
        """Send `rate` messages per second in all, round robin over the senders, then wait
        for the acks and deliveries that are due."""
        last = self.last_seqs()
        for client in self.clients:
            client.reset(last[client.channel])
        self.tally = tally = Tally(rate)
        started, n = time.monotonic(), 0
        while (elapsed := time.monotonic() - started) < duration_s:
            for _ in range(int(rate * elapsed) - n):
                sender = senders[n % len(senders)]
                n += 1
                if sender.outstanding >= OUTSTANDING_MAX:
                    tally.skipped += 1
                    continue
                try:
                    await sender.ws.send(
                        f'{{"type":"send","channel_id":"{sender.channel}","client_msg_id":'
                        f'"b{tally.started_ns}-{n}","text":"{time.time_ns()}"}}')
                except (ConnectionClosed, ConnectionError):
                    sender.outstanding = OUTSTANDING_MAX  # skipped from now on
                    tally.skipped += 1
                    continue
                sender.outstanding += 1
                tally.sent += 1
            await asyncio.sleep(0.005)
        await self._settle(tally)
        return tally

    async def _settle(self, tally: Tally, timeout_s: float = 120.0, stalled_s: float = 5.0,
                      ) -> None:
        """Until every send is answered and every client has its channel's seqs, or nothing
        has arrived for `stalled_s`."""
        deadline, heard = time.monotonic() + timeout_s, (self.frames, time.monotonic())
        while time.monotonic() < deadline:
            if len(tally.ack_ns) + len(tally.errors) >= tally.sent and self.loss() == (0, 0):
                return
            await asyncio.sleep(0.25)
            if self.frames != heard[0]:
                heard = (self.frames, time.monotonic())
            elif time.monotonic() - heard[1] > stalled_s:
                return

    def last_seqs(self) -> dict[str, int]:
        """Each channel's last seq that its sender was told or any member got."""
        last = dict(self.last_seq)
        for client in self.clients:
            last[client.channel] = max(last[client.channel], client.base + client.last)
        return last

    def loss(self) -> tuple[int, int]:
        """(missing, duplicated) deliveries of this step over every client."""
        last = self.last_seqs()
        missing = duplicated = 0
        for client in self.clients:
            m, d = client.loss(last[client.channel] - client.base)
            missing, duplicated = missing + m, duplicated + d
        return missing, duplicated


def _cuts_ms(samples: array) -> tuple[float, float]:
    if len(samples) < 2:
        return (samples[0] / 1e6,) * 2 if samples else (float("nan"),) * 2
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] / 1e6, cuts[98] / 1e6


def _cpu(data_dir: Path | None) -> dict[str, float]:
    seconds = {name: chat_procs.cpu_seconds(pids)
               for name, pids in chat_procs.stack_processes(data_dir).items()}
    own = resource.getrusage(resource.RUSAGE_SELF)
    return seconds | {"bench": own.ru_utime + own.ru_stime,
                      MACHINE: chat_procs.machine_busy_seconds()}


def _cpu_line(before: dict[str, float], after: dict[str, float], wall_s: float) -> str:
    """Each process's share of one core, and how busy the whole machine was: the cores are
    shared, with the load generator and with whatever else runs."""
    used = {n: (after[n] - before.get(n, 0)) / wall_s * 100 for n in after}
    machine = used.pop(MACHINE)
    ours = sorted(((p, n) for n, p in used.items() if p >= 1), reverse=True)
    return (f"  cpu % of one core: {', '.join(f'{n} {p:.0f}' for p, n in ours)}; the machine "
            f"{machine:.0f} of {100 * (os.cpu_count() or 1)}, of which "
            f"{max(machine - sum(used.values()), 0):.0f} by other processes")


# --- the scenarios ------------------------------------------------------------------------

async def deliveries(urls: list[str], users: list[tuple[str, str]], channel_ids: list[str],
                     args: argparse.Namespace, data_dir: Path | None) -> None:
    per_channel = len(users) // len(channel_ids)
    channel_of = [channel_ids[i // per_channel] for i in range(len(users))]
    started = time.monotonic()
    light = args.client == "picows" and not args.deflate
    sockets, failures = await open_sockets(urls, [t for t, _ in users], deflate=args.deflate,
                                           light=light)
    if failures:
        await close_all(sockets)
        raise ConnectionError(f"{len(sockets)} of {len(users)} connected: {failures[0]}")
    clients = [Client(ws, channel_of[i]) for i, ws in enumerate(sockets)]
    print(f"{len(clients):,} clients ({'picows' if light else 'websockets'}) connected in "
          f"{time.monotonic() - started:.1f} s")
    fanout = Fanout(clients)
    listeners = [task for c in clients if (task := fanout.listen(c)) is not None]
    await fanout.quiet()
    senders = [clients[c * per_channel + j] for j in range(args.senders)
               for c in range(len(channel_ids))]
    for rate in args.rate:
        cpu_before, wall = _cpu(data_dir), time.monotonic()
        tally = await fanout.step(rate, args.duration, senders)
        print(_delivery_lines(tally, fanout, args.duration))
        print(_cpu_line(cpu_before, _cpu(data_dir), time.monotonic() - wall))
    for task in listeners:
        task.cancel()
    await close_all(sockets)


def _delivery_lines(tally: Tally, fanout: Fanout, duration_s: float) -> str:
    count, last = len(tally.latencies_ns), fanout.last_seqs()
    due = sum(last[c.channel] - c.base for c in fanout.clients)
    window_s = max(tally.last_delivery_ns - tally.started_ns, 1) / 1e9
    p50, p99 = _cuts_ms(tally.latencies_ns)
    ack50, ack99 = _cuts_ms(tally.ack_ns)
    missing, duplicated = fanout.loss()
    reordered = sum(c.reordered for c in fanout.clients)
    lines = [
        f"{f'deliveries at {tally.rate:g} msg/s':<34} {count / window_s:>9,.0f}/s   "
        f"p50 {p50:>7.1f} ms   p99 {p99:>7.1f} ms   missing {missing} duplicated {duplicated}"
        f"   ({DELIVERY_TARGET})",
        f"  messages sent {tally.sent:,} ({tally.sent / duration_s:,.0f}/s offered "
        f"{tally.rate:g}/s), acked {len(tally.ack_ns):,}; send -> ack p50 {ack50:.1f} ms "
        f"p99 {ack99:.1f} ms; {count:,} deliveries of {due:,} due, "
        f"last {window_s - duration_s:.1f} s after the sending stopped",
    ]
    if missing:
        missed = collections.Counter()
        for client in fanout.clients:
            missed.update((client.channel[-6:], seq)
                          for seq in client.missing(last[client.channel] - client.base))
        lines.append("  most missed: " + ", ".join(
            f"seq {seq} of channel ..{channel} by {n} clients"
            for (channel, seq), n in missed.most_common(4)))
    if tally.skipped or tally.errors or reordered or fanout.lost:
        lines.append(f"  sends skipped (sender {OUTSTANDING_MAX} behind or gone) "
                     f"{tally.skipped:,}, error frames {len(tally.errors)}, "
                     f"out of order {reordered}, "
                     f"connections lost so far {len(fanout.lost)} (close codes "
                     f"{sorted(set(fanout.lost))})" + (f"; first error {tally.errors[0]}"
                                                      if tally.errors else ""))
    return "\n".join(lines)


async def idle(urls: list[str], users: list[tuple[str, str]], count: int,
               data_dir: Path | None, via_gateway: bool, deflate: bool) -> None:
    """Hold `count` idle connections; print what they cost the chat replicas (and nginx)."""
    processes = chat_procs.stack_processes(data_dir)
    chat = {n: pids for n, pids in processes.items() if n == "chat" or n.startswith("chat-")}
    nginx = processes.get("gateway", []) if via_gateway else []
    # Costs of a first connection (imports, caches) are not a connection's.
    warm, _ = await open_sockets(urls, [users[0][0]] * 4, deflate=deflate)
    await close_all(warm)
    await asyncio.sleep(1)
    before = {n: chat_procs.rss_kib(pids) for n, pids in chat.items()}
    nginx_before, started = chat_procs.rss_kib(nginx), time.monotonic()
    tokens = [users[i % len(users)][0] for i in range(count)]
    sockets, failures = await open_sockets(urls, tokens, deflate=deflate, concurrency=128)
    if failures:
        await close_all(sockets)
        raise ConnectionError(f"{len(sockets):,} of {count:,} idle connections opened "
                              f"({len(failures)} failures, first: {failures[0]})")
    opened_s = time.monotonic() - started
    await asyncio.sleep(2)

    def grown(now: dict[str, int]) -> str:
        return ", ".join(f"{n} +{(now[n] - before[n]) / 1024:.0f} MiB" for n in now)

    after = {n: chat_procs.rss_kib(pids) for n, pids in chat.items()}
    per_socket = (sum(after.values()) - sum(before.values())) / count
    print(f"{'idle connections':<34} {count:>9,} ready in {opened_s:.1f} s   "
          f"{per_socket:.1f} KiB each on the chat replicas ({grown(after)})   "
          f"(target <= {IDLE_TARGET_KIB} KiB)")
    if nginx:
        print(f"{'  nginx (for information)':<34} {'':>9}   "
              f"{(chat_procs.rss_kib(nginx) - nginx_before) / count:.1f} KiB each "
              f"({len(nginx)} processes, {nginx_before / 1024:.0f} -> "
              f"{chat_procs.rss_kib(nginx) / 1024:.0f} MiB)")
    await close_all(sockets)
    await asyncio.sleep(3)
    print("  3 s after closing them: " + grown(
        {n: chat_procs.rss_kib(pids) for n, pids in chat.items()}) + " still resident")


# --- running ------------------------------------------------------------------------------

async def _connect_somehow(scenario, count: int, base_url: str, args: argparse.Namespace,
                           data_dir: Path | None) -> None:
    """Through the gateway if it can hold `count` WebSockets; else (or if it refuses them)
    say why and what it would need, and go straight to the chat replicas."""
    gateway = [base_url.replace("http", "ws", 1) + "/ws/chat"]
    replicas = [f"ws://127.0.0.1:{p}/ws/chat" for p in chat_procs.chat_ports(data_dir)]
    route, limits = args.via, chat_procs.gateway_limits(data_dir)
    # Each proxied WebSocket holds two of a worker's connections, and the workers share
    # them unevenly: with 2 x 1024, some of 1,000 WebSockets were refused.
    if limits and count > limits[0] * limits[1] // 2 * 0.8:
        workers, connections = limits
        needed = 1 << math.ceil(math.log2(2 * count * 1.25 / workers))
        print(f"  the gateway holds fewer than {workers * connections // 2:,} WebSockets "
              f"({workers} workers x worker_connections {connections}, 2 per proxied WebSocket): "
              f"{count:,} need worker_connections {needed} (and as many open files per worker)")
        route = "replicas" if route == "auto" else route
    if route != "replicas":
        complaints = chat_procs.nginx_complaints(data_dir)
        try:
            return await scenario(gateway, True)
        except ConnectionError as exc:
            print(f"  through the gateway: {exc}")
            if chat_procs.nginx_complaints(data_dir) > complaints:
                print("  nginx's error.log says 'worker_connections are not enough'")
            if route == "gateway":
                return None
    if not replicas:
        raise SystemExit("no chat replica found to connect to: pass --data-dir")
    print(f"  straight to the chat replicas {replicas}, not through the gateway")
    return await scenario(replicas, False)


async def _run(base_url: str, args: argparse.Namespace, data_dir: Path | None) -> None:
    only = set(args.only or ("idle", "deliveries"))
    started = time.monotonic()
    count = max(args.clients if "deliveries" in only else 0,
                args.idle_users if "idle" in only else 0)
    users = await sign_up(base_url, count, prefix="chat", concurrency=12)
    print(f"stack {base_url}, {len(users):,} users signed up in "
          f"{time.monotonic() - started:.0f} s")
    if "idle" in only:
        # Before any channel exists, so that nobody is told of anybody's presence.
        await _connect_somehow(
            lambda urls, via_gateway: idle(urls, users[:args.idle_users], args.idle, data_dir,
                                           via_gateway, args.deflate),
            args.idle, base_url, args, data_dir)
    if "deliveries" in only:
        per_channel = args.clients // args.channels
        members = users[:per_channel * args.channels]
        channel_ids = await open_channels(base_url, [
            members[i:i + per_channel] for i in range(0, len(members), per_channel)])
        print(f"{len(members):,} clients in {len(channel_ids)} channels of {per_channel}, "
              f"{args.senders * len(channel_ids)} senders, {args.duration} s per rate")
        if data_dir is not None:
            # The sign-ups' and channels' events are still flowing: not this scenario's load.
            drained = await asyncio.to_thread(wait_drained, data_dir)
            print("  their events all through after " + (
                f"{drained:.1f} s" if drained is not None else "more than 300 s"))
        await _connect_somehow(
            lambda urls, _: deliveries(urls, members, channel_ids, args, data_dir),
            len(members), base_url, args, data_dir)


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="benchmark a stack that already runs (else start one)")
    parser.add_argument("--data-dir", type=Path, default=Path(".data"),
                        help="with --url: the running stack's data dir (for its processes)")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--senders", type=int, default=10, help="senders per channel")
    parser.add_argument("--duration", type=float, default=20, help="seconds per rate")
    parser.add_argument("--rate", type=float, nargs="+", default=[260.0],
                        help="messages per second in all; several run one after another")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections")
    parser.add_argument("--idle-users", type=int, default=100, help="users they belong to")
    parser.add_argument("--via", choices=("auto", "gateway", "replicas"), default="auto",
                        help="auto: the gateway, or the replicas if it cannot hold them")
    parser.add_argument("--replicas", help="e.g. chat=1 (embedded only; default: the stack's)")
    parser.add_argument("--deflate", action="store_true",
                        help="negotiate permessage-deflate, as browsers do (default: off)")
    parser.add_argument("--client", choices=("picows", "websockets"), default="picows",
                        help="the delivery clients' library (websockets with --deflate)")
    parser.add_argument("--only", nargs="*", choices=("deliveries", "idle"))
    args = parser.parse_args()
    _raise_file_limit()
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    if args.url:
        data_dir = args.data_dir if (args.data_dir / "run").is_dir() else None
        run(_run(args.url.rstrip("/"), args, data_dir))
    else:
        with embedded_stack(free_port(), args.replicas) as (base_url, data_dir):
            run(_run(base_url, args, data_dir))


if __name__ == "__main__":
    main()
