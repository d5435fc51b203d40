"""Who is listening to their notification stream on this replica, and the Redis channel that
tells every replica whose inbox changed. A message lost while Redis restarts costs nothing
but time: each stream also looks again at least every keep-alive interval, and it reads what
is new from the store, by seq."""

import asyncio
import contextlib
import json
import logging
from collections import defaultdict

from redis.asyncio import Redis

log = logging.getLogger("notifier.streams")
CHANNEL = "notifier:changed"


class Streams:
    def __init__(self, redis: Redis | None) -> None:
        self.redis = redis
        self._waiting: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._unpublished: set[str] = set()
        self._publisher: asyncio.Task[None] | None = None

    def listen(self, user_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiting[user_id].add(event)
        return event

    def stop(self, user_id: str, event: asyncio.Event) -> None:
        waiting = self._waiting.get(user_id)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiting[user_id]

    def _wake(self, user_ids: list[str]) -> None:
        for user_id in user_ids:
            for event in self._waiting.get(user_id, ()):
                event.set()

    async def changed(self, user_ids: list[str]) -> None:
        """These users' inboxes changed: wake their streams here at once, and on the other
        replicas through Redis. The users that change while one publish is under way go out
        together in the next (one publish per event took 6 % of the notifier's CPU at 250
        events/s)."""
        self._wake(user_ids)
        if self.redis is None:
            return
        self._unpublished.update(user_ids)
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish())

    async def _publish(self) -> None:
        assert self.redis is not None
        while self._unpublished:
            user_ids, self._unpublished = sorted(self._unpublished), set()
            try:
                await self.redis.publish(CHANNEL, json.dumps(user_ids))
            except Exception:
                log.warning("could not tell other replicas about %d inboxes", len(user_ids),
                            exc_info=True)

    async def run(self) -> None:
        if self.redis is None:
            return
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._wake(list(self._waiting))  # whatever was missed meanwhile
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._wake(json.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("notification channel lost; resubscribing", exc_info=True)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
