"""Notifications over HTTP: the inbox, the SSE stream, push subscriptions and preferences."""

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from botocore.exceptions import ClientError
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from ulid import ULID

from chassis.auth import CurrentUser
from chassis.db import DatabaseDep, utcnow
from chassis.events import rfc3339
from chassis.pagination import Cursor, Limit, decode_cursor, encode_cursor
from chassis.problems import Problem, invalid, not_found

from . import webpush
from .inbox import TYPES, ensure_inbox
from .models import inboxes, notifications, preferences, push_jobs, subscriptions, users

router = APIRouter(prefix="/api/notifications", tags=["notifications"])
_USER = bindparam("user")
_INBOX = select(inboxes.c.last_seq, inboxes.c.read_seq).where(inboxes.c.user_id == _USER)
_PAGE = (select(notifications).where(notifications.c.user_id == _USER,
                                     notifications.c.seq < bindparam("before"))
         .order_by(notifications.c.seq.desc()).limit(bindparam("limit")))
_AFTER = (select(notifications).where(notifications.c.user_id == _USER,
                                      notifications.c.seq > bindparam("after"))
          .order_by(notifications.c.seq).limit(100))
_UNREAD = select(func.count()).select_from(notifications).where(
    notifications.c.user_id == _USER, notifications.c.seq > bindparam("read_seq"))


def _views(conn: Connection, rows: list[Any], read_seq: int) -> list[dict[str, Any]]:
    """Notifications with their actors' names (newest actor first)."""
    actor_ids = {a for row in rows for a in row.actor_ids}
    known = {u.user_id: u for u in conn.execute(select(users).where(
        users.c.user_id.in_(actor_ids)))} if actor_ids else {}

    def actor(user_id: str) -> dict[str, Any]:
        u = known.get(user_id)
        return {"user_id": user_id, "username": u.username if u else None,
                "display_name": u.display_name if u else None,
                "avatar_url": u.avatar_url if u else None}

    return [{"id": row.id, "type": row.type, "actor": actor(row.actor_ids[0]),
             "actors": [actor(a) for a in row.actor_ids], "actor_count": row.actor_count,
             "subject": row.subject, "seq": row.seq, "read": row.seq <= read_seq,
             "created_at": rfc3339(row.updated_at), "first_at": rfc3339(row.created_at)}
            for row in rows]


@router.get("")
async def inbox(user: CurrentUser, db: DatabaseDep, cursor: Cursor = None,
                limit: Limit = 20) -> JSONResponse:
    """Newest first, grouped; `unread_count` counts what is past the read marker."""
    position = decode_cursor(cursor, "seq")

    def read(conn: Connection) -> dict[str, Any]:
        state = conn.execute(_INBOX, {"user": user.id}).first()
        read_seq = state.read_seq if state else 0
        rows = conn.execute(_PAGE, {"user": user.id, "limit": limit + 1, "before": (
            position["seq"] if position else 2**31 - 1)}).all()
        items = _views(conn, rows[:limit], read_seq)
        return {"items": items,
                "next_cursor": encode_cursor({"seq": rows[limit - 1].seq})
                if len(rows) > limit else None,
                "unread_count": conn.execute(_UNREAD, {"user": user.id,
                                                       "read_seq": read_seq}).scalar()}

    return JSONResponse(await db.run(read))


class ReadUpTo(BaseModel):
    up_to_id: str = Field(pattern=r"^[0-9A-Za-z]{26}$")


@router.post("/read")
async def mark_read(body: ReadUpTo, user: CurrentUser, db: DatabaseDep) -> JSONResponse:
    """Everything up to this notification is read (on every device: not pushed any more)."""

    def mark(conn: Connection) -> dict[str, Any]:
        seq = conn.execute(select(notifications.c.seq).where(
            notifications.c.id == body.up_to_id, notifications.c.user_id == user.id)).scalar()
        if seq is None:
            raise invalid("up_to_id", "no such notification of yours")
        conn.execute(update(inboxes).where(inboxes.c.user_id == user.id,
                                           inboxes.c.read_seq < seq).values(read_seq=seq))
        read_seq = conn.execute(_INBOX, {"user": user.id}).one().read_seq
        return {"read_seq": read_seq, "unread_count": conn.execute(
            _UNREAD, {"user": user.id, "read_seq": read_seq}).scalar()}

    return JSONResponse(await db.run(mark))


@router.get("/stream")
async def stream(request: Request, user: CurrentUser, db: DatabaseDep,
                 last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Server-sent events: each notification as it is made or grouped (`id:` its seq), from
    just after `Last-Event-ID` when reconnecting; a comment every so often keeps it open."""
    try:
        after = int(last_event_id) if last_event_id else None
    except ValueError:
        raise invalid("Last-Event-ID", "must be a seq from this stream", 400) from None
    if after is None:
        state = await db.run(lambda conn: conn.execute(_INBOX, {"user": user.id}).first())
        after = state.last_seq if state else 0
    streams = request.app.state.streams
    keepalive = request.app.state.settings.stream_keepalive_s

    async def events() -> AsyncIterator[bytes]:
        nonlocal after
        wake = streams.listen(user.id)
        try:
            yield b"retry: 2000\n\n"
            while not await request.is_disconnected():
                wake.clear()
                rows = await db.run(functools.partial(_since, user_id=user.id, after=after))
                for item in rows:
                    after = item["seq"]
                    yield (f"id: {item['seq']}\nevent: notification\n"
                           f"data: {json.dumps(item, separators=(',', ':'))}\n\n").encode()
                try:
                    async with asyncio.timeout(keepalive):
                        await wake.wait()
                except TimeoutError:
                    yield b": keepalive\n\n"
        finally:
            streams.stop(user.id, wake)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _since(conn: Connection, user_id: str, after: int) -> list[dict[str, Any]]:
    state = conn.execute(_INBOX, {"user": user_id}).first()
    rows = conn.execute(_AFTER, {"user": user_id, "after": after}).all()
    return _views(conn, rows, state.read_seq if state else 0)


@router.get("/vapid-public-key")
async def vapid_public_key(request: Request) -> dict[str, str]:
    """The key browsers pass as `applicationServerKey` (no auth needed)."""
    key = request.app.state.settings.vapid_public_key
    if not key:
        raise Problem(503, "Web Push is not configured (no VAPID key)")
    return {"key": key}


class PushKeys(BaseModel):
    p256dh: str = Field(max_length=128)
    auth: str = Field(max_length=64)


class NewSubscription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["webpush", "apns", "fcm"]
    endpoint: str | None = Field(None, max_length=2048)
    keys: PushKeys | None = None
    token: str | None = Field(None, min_length=8, max_length=4096, pattern=r"^[A-Za-z0-9_:.\-]+$")


@router.post("/subscriptions", status_code=201)
async def subscribe(body: NewSubscription, user: CurrentUser, db: DatabaseDep,
                    request: Request) -> dict[str, str]:
    """Register a device: a browser's Web Push subscription or an APNs/FCM device token."""
    settings = request.app.state.settings
    row: dict[str, Any] = {"id": str(ULID()), "user_id": user.id, "kind": body.kind,
                           "created_at": utcnow()}
    if body.kind == "webpush":
        if body.endpoint is None or body.keys is None:
            raise invalid("endpoint" if body.endpoint is None else "keys",
                          "a Web Push subscription has an endpoint and keys")
        # In a thread: checking the host resolves it (DNS blocks).
        await asyncio.to_thread(webpush.validate_subscription, body.endpoint, body.keys.p256dh,
                                body.keys.auth,
                                allow_private=settings.allow_private_push_endpoints)
        row |= {"endpoint": body.endpoint, "p256dh": body.keys.p256dh, "auth": body.keys.auth}
    else:
        if body.token is None:
            raise invalid("token", "an APNs or FCM subscription has a device token")
        platform = settings.apns_platform_arn if body.kind == "apns" else settings.fcm_platform_arn
        if not platform:
            raise Problem(503, f"{body.kind} push is not configured here")
        arn = await _platform_endpoint(request.app.state.sns, platform, body.token, user.id)
        row |= {"token": body.token, "endpoint_arn": arn}

    def add(conn: Connection) -> str:
        same = select(subscriptions.c.id).where(
            subscriptions.c.user_id == user.id, subscriptions.c.kind == body.kind,
            subscriptions.c.endpoint.is_(row.get("endpoint")) if row.get("endpoint") is None
            else subscriptions.c.endpoint == row["endpoint"],
            subscriptions.c.token.is_(None) if row.get("token") is None
            else subscriptions.c.token == row["token"])
        existing = conn.execute(same).scalar()
        if existing:
            return existing
        ensure_inbox(conn, user.id)
        conn.execute(insert(subscriptions).values(row))
        return row["id"]

    return {"id": await db.run(add)}


_TAKEN = re.compile(r"Endpoint (arn:aws:sns:\S+) already exists")


async def _platform_endpoint(sns: Any, platform: str, token: str, user_id: str) -> str:
    """The device's SNS endpoint. A token SNS knows with other attributes (the device changed
    hands, or was disabled) is taken over and enabled, as AWS advises."""
    try:
        created = await sns.create_platform_endpoint(
            PlatformApplicationArn=platform, Token=token, CustomUserData=user_id)
        return created["EndpointArn"]
    except ClientError as error:
        taken = _TAKEN.search(error.response["Error"].get("Message", ""))
        if error.response["Error"]["Code"] != "InvalidParameter" or not taken:
            raise Problem(502, f"the push platform refused the device: {error}") from error
    await sns.set_endpoint_attributes(EndpointArn=taken.group(1), Attributes={
        "CustomUserData": user_id, "Enabled": "true"})
    return taken.group(1)


@router.delete("/subscriptions/{subscription_id}", status_code=204)
async def unsubscribe(subscription_id: str, user: CurrentUser, db: DatabaseDep) -> Response:
    def remove(conn: Connection) -> None:
        gone = conn.execute(delete(subscriptions).where(
            subscriptions.c.id == subscription_id, subscriptions.c.user_id == user.id))
        if not gone.rowcount:
            raise not_found("subscription")
        conn.execute(delete(push_jobs).where(push_jobs.c.subscription_id == subscription_id))

    await db.run(remove)
    return Response(status_code=204)


class Preferences(BaseModel):
    """Which types notify you (all on unless turned off), and whether pushes may show who
    did what (previews); unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")

    follow: bool = True
    mention: bool = True
    reply: bool = True
    like: bool = True
    chat_message: bool = True
    call: bool = True
    previews: bool = False


@router.get("/preferences")
async def get_preferences(user: CurrentUser, db: DatabaseDep) -> Preferences:
    row = await db.run(lambda conn: conn.execute(
        select(preferences).where(preferences.c.user_id == user.id)).first())
    if row is None:
        return Preferences()
    return Preferences(**{t: row.types.get(t, True) for t in TYPES}, previews=row.previews)


@router.put("/preferences")
async def put_preferences(body: Preferences, user: CurrentUser, db: DatabaseDep) -> Preferences:
    values = {"types": {t: getattr(body, t) for t in TYPES}, "previews": body.previews}

    def save(conn: Connection) -> None:
        if not conn.execute(update(preferences).where(preferences.c.user_id == user.id)
                            .values(values)).rowcount:
            conn.execute(insert(preferences).values(user_id=user.id, **values))

    await db.run(save)
    return body
