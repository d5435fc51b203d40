"""Signaling between replicas through Redis pub/sub.

Every frame for a call's participants is published once on `calls:signal` with its address
(call, recipient or everyone but the sender); every replica hears it and hands it to the
sessions it holds for that call. A participant is any `Peer`: a client's WebSocket session or
a server-side peer such as a call recorder.

Each replica also listens on its own channel, `calls:node:<id>`, for requests meant for the
media it holds (a WHEP viewer for a live stream it ingests, the end of that stream): `request`
sends one there and waits for the answer.
"""

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from prometheus_client import Counter
from redis.asyncio import Redis

from chassis.problems import Problem
from chassis.pubsub import listen

log = logging.getLogger("call.hub")
SIGNAL = "calls:signal"
NODE = "calls:node:"
RELAYED = Counter("call_signal_frames_total", "Signaling frames handed to local peers", ["type"])
PUBLISH_FAILURES = Counter("call_signal_publish_failures_total",
                           "Signaling publishes to Redis that failed")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Peer(Protocol):
    user_id: str

    def deliver(self, kind: str, user_id: str | None, frame: bytes) -> None:
        """A frame of type `kind` (about `user_id`, for participant frames), encoded."""


def encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class Hub:
    """This replica's peers by call, and its ends of the Redis channels."""

    def __init__(self, redis: Redis, node_id: str | None = None) -> None:
        self.redis = redis
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.peers: dict[str, dict[str, Peer]] = {}  # call id -> user id -> peer
        self.handlers: dict[str, Handler] = {}  # request op -> what answers it here
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ready = asyncio.Event()

    # --- peers ------------------------------------------------------------------------------

    def attach(self, call_id: str, peer: Peer) -> Peer | None:
        """Hold a peer for the call; returns the one it replaces (the same user's older
        connection), which the caller should close."""
        held = self.peers.setdefault(call_id, {})
        previous = held.get(peer.user_id)
        held[peer.user_id] = peer
        return previous if previous is not peer else None

    def detach(self, call_id: str, peer: Peer) -> None:
        held = self.peers.get(call_id, {})
        if held.get(peer.user_id) is peer:
            del held[peer.user_id]
            if not held:
                self.peers.pop(call_id, None)

    async def send(self, call_id: str, frame: dict[str, Any], *, to: str | None = None,
                   skip: str | None = None) -> None:
        """A frame to one participant (`to`) or to all but `skip`, wherever they are.

        Published as a header line (call, recipient, skip, the frame's type and user) and the
        frame as clients get it: replicas route it by the header and hand the same bytes on,
        without decoding the frame."""
        header = {"c": call_id, "t": to, "x": skip, "k": frame.get("type"),
                  "u": frame.get("user_id")}
        try:
            await self.redis.publish(SIGNAL, f"{encode(header)}\n{encode(frame)}")
        except Exception:
            PUBLISH_FAILURES.inc()
            log.warning("publishing a %s frame for call %s failed", frame.get("type"), call_id,
                        exc_info=True)

    def _deliver(self, payload: bytes) -> None:
        header_line, _, frame = payload.partition(b"\n")
        header = json.loads(header_line)
        held = self.peers.get(header["c"])
        if not held:
            return
        to, skip, kind = header["t"], header["x"], header["k"]
        targets = [held[to]] if to in held else [] if to else [
            p for u, p in held.items() if u != skip]
        for peer in targets:
            peer.deliver(kind, header["u"], frame)
            RELAYED.labels(kind).inc()

    # --- requests to the replica that holds some media ----------------------------------

    async def request(self, node_id: str, op: str, args: dict[str, Any],
                      timeout_s: float = 10.0) -> dict[str, Any]:
        """Ask the replica `node_id` to do `op`; its answer, or the Problem it raised."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            receivers = await self.redis.publish(NODE + node_id, encode(
                {"id": request_id, "op": op, "args": args, "reply": self.node_id}))
            if not receivers:
                raise Problem(503, "the server holding this media is gone; try again later")
            answer = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise Problem(504, "the server holding this media did not answer in time") from None
        finally:
            self._waiting.pop(request_id, None)
        if "problem" in answer:
            problem = answer["problem"]
            raise Problem(problem["status"], problem["detail"], errors=problem.get("errors"))
        return answer["result"]

    async def _on_node_message(self, payload: bytes) -> None:
        message = json.loads(payload)
        if "op" not in message:  # an answer to one of ours
            future = self._waiting.get(message["id"])
            if future is not None and not future.done():
                future.set_result(message)
            return
        handler = self.handlers.get(message["op"])
        try:
            if handler is None:
                raise Problem(501, f"no handler for {message['op']}")
            answer: dict[str, Any] = {"result": await handler(message["args"])}
        except Problem as problem:
            answer = {"problem": {"status": problem.status, "detail": problem.detail,
                                  "errors": problem.extra.get("errors")}}
        except Exception:
            log.exception("request %s failed", message["op"])
            answer = {"problem": {"status": 500, "detail": "the request failed"}}
        await self.redis.publish(NODE + message["reply"], encode({"id": message["id"]} | answer))

    # --- the subscription -------------------------------------------------------------------

    async def run(self) -> None:
        """Listen until cancelled (resubscribing after a lost connection)."""
        tasks: set[asyncio.Task[None]] = set()
        signal = SIGNAL.encode()

        def on_message(channel: bytes, data: bytes) -> None:
            if channel == signal:
                self._deliver(data)
            else:  # answered on its own task: a request may take a while
                task = asyncio.create_task(self._on_node_message(data))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        async def subscribed(first: bool) -> None:
            self.ready.set()

        await listen(self.redis, [SIGNAL, NODE + self.node_id], on_message,
                     on_subscribed=subscribed, name="signaling")
