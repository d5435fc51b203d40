"""The fan-out between replicas: every change is published once to Redis, every replica hears
it and hands the same encoded frame to the sessions of the members it holds.

A published payload is a small header line (channel, seq, members) and the frame as the
clients get it, so a replica routes it without decoding the frame and every session sends the
same bytes. Redis pub/sub delivers at most once: a payload lost while Redis restarts or a
replica reconnects is recovered from the store (a session fills any gap in a channel's seqs
before it sends what follows, and after the hub resubscribes every session catches up).

Senders on different replicas (or on one, over different Redis connections) publish a
channel's seqs in whatever order their commits finish, so seq 7 is often heard just before 6.
Rather than have each of the channel's sessions read 6 from the store, the hub holds 7 for
up to `reorder_wait_s` until 6 comes, and hands both on in order; only a seq still missing
then (lost) is left to the sessions' gap fill. In a 250 messages/s run, gap fills had been
14 % of a replica's CPU, each a read queued behind the writer's commits.

Presence is a key per user with a short expiry that each replica refreshes for the users it
holds; a user's presence frame goes out at most once per `presence_gate_s`.
"""

import asyncio
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from prometheus_client import Counter
from redis.asyncio import Redis

from chassis.pubsub import listen

log = logging.getLogger("chat.hub")
FANOUT = "chat:fanout"
ONLINE = "chat:online:"
GATE = "chat:presence-gate:"
DELIVERED = Counter("chat_frames_delivered_total", "Frames handed to local sessions", ["kind"])
DROPPED = Counter("chat_sessions_dropped_total", "Sessions closed: they could not keep up")
FANOUT_FAILURES = Counter("chat_fanout_publish_failures_total",
                          "Publishes to Redis that failed (the store still has the change)")
REORDERED = Counter("chat_fanout_reordered_total",
                    "Message frames heard ahead of an earlier seq and held back for it",
                    ["outcome"])  # in_order: the earlier one came; gave_up: it did not in time
GAP_FILLS = Counter("chat_gap_fills_total",
                    "Times a session read a channel's seqs that the fan-out skipped from the store")
CHANNELS_TRACKED_MAX = 100_000  # channels whose next seq the hub remembers


class Receiver(Protocol):
    user_id: str

    def offer(self, kind: str, channel_id: str, seq: int | None, frame: bytes) -> None: ...

    async def catch_up(self) -> None: ...


def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class Hub:
    """This replica's sessions by user, and its end of the Redis fan-out."""

    def __init__(self, redis: Redis, *, presence_ttl_s: int = 60,
                 presence_gate_s: float = 10.0, reorder_wait_s: float = 0.05) -> None:
        self.redis = redis
        self.replica = uuid.uuid4().hex[:12]
        self.sessions: dict[str, set[Receiver]] = defaultdict(set)
        self._presence_ttl = presence_ttl_s
        self._presence_gate = presence_gate_s
        self.on_presence: Callable[[str, bool], Awaitable[None]] | None = None
        # Thousands of sessions may open or close at once (a replica restarting): their
        # presence updates take turns instead of exhausting the Redis connection pool.
        self._presence_ops = asyncio.Semaphore(32)
        self._reorder_wait = reorder_wait_s
        self._next_seq: dict[str, int] = {}  # channel -> the seq due next from the fan-out
        # channel -> seq -> (header, frame): heard ahead of the one due, waiting for it
        self._early: dict[str, dict[int, tuple[dict[str, Any], bytes]]] = {}
        self._give_up: dict[str, asyncio.TimerHandle] = {}

    # --- publishing ---------------------------------------------------------------------

    async def publish(self, kind: str, channel_id: str, member_ids: Iterable[str],
                      frame: dict[str, Any], seq: int | None = None) -> None:
        """Send a frame to every live session of these members, on every replica."""
        header = {"k": kind, "c": channel_id, "s": seq, "m": list(member_ids)}
        payload = json.dumps(header, separators=(",", ":")).encode() + b"\n" + encode(frame)
        try:
            await self.redis.publish(FANOUT, payload)
        except Exception:
            FANOUT_FAILURES.inc()
            log.warning("fan-out of %s in %s failed; sessions catch up from the store",
                        kind, channel_id, exc_info=True)

    # --- receiving ----------------------------------------------------------------------

    async def run(self) -> None:
        """Listen until cancelled; after a lost subscription, every session catches up on
        what it may have missed meanwhile."""
        async def subscribed(first: bool) -> None:
            if not first:
                log.info("fan-out resubscribed; %d users' sessions catch up", len(self.sessions))
                await self._all_catch_up()

        await listen(self.redis, [FANOUT], lambda _, data: self.deliver(data),
                     on_subscribed=subscribed, name="fan-out")

    def deliver(self, payload: bytes) -> None:
        header_line, _, frame = payload.partition(b"\n")
        header = json.loads(header_line)
        if header["k"] == "message" and header["s"] is not None:
            self._in_order(header, frame)
        else:
            self._hand(header, frame)

    def _in_order(self, header: dict[str, Any], frame: bytes) -> None:
        """Hand a message frame on after the channel's earlier seqs: one heard ahead of the
        seq due waits (up to the reorder wait); one due, the channel's first heard or an old
        one (sessions skip repeats) goes at once, followed by those it was holding up."""
        channel_id, seq = header["c"], header["s"]
        due = self._next_seq.get(channel_id)
        if due is not None and seq > due:
            self._early.setdefault(channel_id, {})[seq] = (header, frame)
            if channel_id not in self._give_up:
                self._give_up[channel_id] = asyncio.get_running_loop().call_later(
                    self._reorder_wait, self._release, channel_id)
            return
        self._hand(header, frame)
        if due is None and len(self._next_seq) >= CHANNELS_TRACKED_MAX:
            self._next_seq.clear()
        self._next_seq[channel_id] = max(seq + 1, due or 0)
        early = self._early.get(channel_id)
        while early and (waiting := early.pop(self._next_seq[channel_id], None)):
            REORDERED.labels("in_order").inc()
            self._hand(*waiting)
            self._next_seq[channel_id] += 1
        if early is not None and not early:  # nothing waits any more: no give-up either
            del self._early[channel_id]
            self._give_up.pop(channel_id).cancel()

    def _release(self, channel_id: str) -> None:
        """The seq due never came: hand on what waited, in order; the sessions fill the gap
        from the store."""
        self._give_up.pop(channel_id, None)
        early = self._early.pop(channel_id, {})
        for seq in sorted(early):
            REORDERED.labels("gave_up").inc()
            self._hand(*early[seq])
            self._next_seq[channel_id] = seq + 1

    def _hand(self, header: dict[str, Any], frame: bytes) -> None:
        kind, channel_id, seq, held = header["k"], header["c"], header["s"], self.sessions
        handed = 0
        for user_id in header["m"]:
            for session in (targets := tuple(held.get(user_id, ()))):
                session.offer(kind, channel_id, seq, frame)
            handed += len(targets)
        if handed:
            DELIVERED.labels(kind).inc(handed)

    async def _all_catch_up(self) -> None:
        for channel_id in list(self._early):
            self._release(channel_id)
        self._next_seq.clear()  # what was missed meanwhile is due from the store, not from here
        for sessions in list(self.sessions.values()):
            for session in tuple(sessions):
                await session.catch_up()

    # --- sessions and presence ----------------------------------------------------------

    async def join(self, session: Receiver) -> None:
        first = not self.sessions.get(session.user_id)
        self.sessions[session.user_id].add(session)
        if first:
            try:
                async with self._presence_ops:
                    await self.redis.set(ONLINE + session.user_id, self.replica,
                                         ex=self._presence_ttl)
                    await self._announce(session.user_id, True)
            except Exception:
                log.warning("could not record presence of %s", session.user_id, exc_info=True)

    async def leave(self, session: Receiver) -> None:
        held = self.sessions.get(session.user_id)
        if held is None:
            return
        held.discard(session)
        if held:
            return
        del self.sessions[session.user_id]
        try:
            # Another replica holding this user sets the key again on its next refresh.
            async with self._presence_ops:
                await self.redis.delete(ONLINE + session.user_id)
                await self._announce(session.user_id, False)
        except Exception:
            log.warning("could not clear presence of %s", session.user_id, exc_info=True)

    async def _announce(self, user_id: str, online: bool) -> None:
        """A presence frame, at most once per gate interval per user and state."""
        gate = f"{GATE}{user_id}:{int(online)}"
        if self.on_presence and await self.redis.set(gate, 1, nx=True,
                                                     px=int(self._presence_gate * 1000)):
            await self.on_presence(user_id, online)

    async def online(self, user_ids: list[str]) -> set[str]:
        """Which of these users have a live session on some replica."""
        if not user_ids:
            return set()
        local = {u for u in user_ids if self.sessions.get(u)}
        rest = [u for u in user_ids if u not in local]
        if not rest:
            return local
        try:
            values = await self.redis.mget([ONLINE + u for u in rest])
        except Exception:
            log.warning("presence unknown (Redis); treating remote users as offline",
                        exc_info=True)
            return local
        return local | {u for u, value in zip(rest, values, strict=True) if value is not None}

    async def refresh_presence(self) -> None:
        """Keep the presence keys of the users held here alive (every third of their TTL)."""
        while True:
            await asyncio.sleep(self._presence_ttl / 3)
            users = list(self.sessions)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for user_id in users:
                        pipe.set(ONLINE + user_id, self.replica, ex=self._presence_ttl)
                    await pipe.execute()
            except Exception:
                log.warning("could not refresh presence of %d users", len(users),
                            exc_info=True)


class Throttle:
    """At most one event per key per interval (typing indicators), in this process."""

    def __init__(self, interval_s: float, max_keys: int = 100_000) -> None:
        self._interval = interval_s
        self._last: dict[Any, float] = {}
        self._max = max_keys

    def allow(self, key: Any) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            return False
        if len(self._last) >= self._max:
            self._last.clear()
        self._last[key] = now
        return True
