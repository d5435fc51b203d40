"""`posts_count` on profiles, kept from the post service's `post.created`/`post.deleted`.

Each post moves the count once: created counts it unless its delete came first, deleted
uncounts it if it was counted. The events' other fields are the post service's business, so
only the two this needs are read (the catalog contract test covers the rest).
"""

from pydantic import ConfigDict
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from chassis.consumer import Apply
from chassis.db import per_dialect
from chassis.events import Envelope, EventData

from .models import CountedPost, Profile

_COUNTED, _PROFILES = CountedPost.__table__, Profile.__table__


class PostRef(EventData):
    model_config = ConfigDict(extra="ignore")

    post_id: str
    author_id: str


# Built once: building a statement per event was half of what a post cost this consumer.
_BUMP = (update(_PROFILES).where(_PROFILES.c.user_id == bindparam("user"))
         .values(posts_count=_PROFILES.c.posts_count + bindparam("delta")))
_STATE = select(_COUNTED.c.live).where(_COUNTED.c.post_id == bindparam("post"))
# A create inserts the post's row unless an event about it came first. A delete that found
# no row inserts plainly: if the create's row went in meanwhile (on PostgreSQL units run side
# by side), the conflict fails the unit, and its retry finds the row and uncounts it.
_COUNT_UNLESS_SEEN = per_dialect(lambda insert_: insert_(_COUNTED).on_conflict_do_nothing())
_COUNT = insert(_COUNTED)
_UNCOUNT = update(_COUNTED).where(_COUNTED.c.post_id == bindparam("post")).values(live=False)


def _bump(conn: Connection, user_id: str, delta: int) -> None:
    conn.execute(_BUMP, {"user": user_id, "delta": delta})


def _state(conn: Connection, post_id: str) -> bool | None:
    return conn.execute(_STATE, {"post": post_id}).scalar()


def created(conn: Connection, envelope: Envelope) -> None:
    post = PostRef.model_validate(envelope.data)
    if conn.execute(_COUNT_UNLESS_SEEN(conn), {"post_id": post.post_id,
                                               "author_id": post.author_id,
                                               "live": True}).rowcount == 1:
        _bump(conn, post.author_id, 1)


def deleted(conn: Connection, envelope: Envelope) -> None:
    post = PostRef.model_validate(envelope.data)
    live = _state(conn, post.post_id)
    if live is None:  # the delete overtook the create
        conn.execute(_COUNT, {"post_id": post.post_id, "author_id": post.author_id,
                              "live": False})
    elif live:
        conn.execute(_UNCOUNT, {"post": post.post_id})
        _bump(conn, post.author_id, -1)


def handlers(forget: "Forget") -> dict[str, Apply]:
    """The `profile-post` queue's handlers; `forget` drops the author's cached view."""

    async def after(envelope: Envelope) -> None:
        await forget(envelope.data["author_id"])

    return {"post.created": Apply(created, after=after),
            "post.deleted": Apply(deleted, after=after)}


class Forget:
    """Drops cached profile views; the cache exists only once the service started."""

    def __init__(self) -> None:
        self.cache = None

    async def __call__(self, user_id: str) -> None:
        if self.cache is not None:
            await self.cache.forget(user_id)
