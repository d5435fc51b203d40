"""Calls over HTTP: ICE servers, starting a call, reading, declining and leaving it (the
signaling socket is in `ws`, recording in `recording`, live streams in `live`)."""

import functools
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from chassis.auth import CurrentUser
from chassis.db import DatabaseDep
from chassis.idempotency import IdempotencyKey, once_in_unit
from chassis.pagination import Cursor, Limit, decode_cursor, encode_cursor

from . import commands
from .actions import Calls, json_ready
from .models import metadata

router = APIRouter(prefix="/api/calls", tags=["calls"])
ID = r"^[0-9A-Za-z_-]{1,64}$"
CallId = Annotated[str, Path(pattern=ID)]
UserId = Annotated[str, Field(pattern=ID)]


class NewCall(BaseModel):
    callee_ids: list[UserId] | None = Field(None, min_length=1, max_length=64)
    channel_id: str | None = Field(None, pattern=ID)
    media: Literal["audio", "video"] = "video"


def calls_of(request: Request) -> Calls:
    return request.app.state.calls


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(json_ready(body), status_code=status)


@router.get("/ice-servers")
async def ice_servers(user: CurrentUser, request: Request) -> JSONResponse:
    """STUN/TURN servers for the caller, with short-lived TURN credentials."""
    servers, ttl = await request.app.state.ice.for_user(user.id)
    return _json({"ice_servers": servers, "ttl_s": ttl})


@router.post("", status_code=201)
async def start_call(body: NewCall, user: CurrentUser, db: DatabaseDep, request: Request,
                     idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Ring the callees (or a channel's other members); join through /ws/calls/{call_id}."""
    settings = calls_of(request).settings

    def create(conn: Any) -> dict[str, Any]:
        return json_ready(commands.start_call(
            conn, caller=user.id, callee_ids=body.callee_ids, channel_id=body.channel_id,
            media=body.media, ring_timeout_s=settings.ring_timeout_s,
            participants_max=settings.participants_max))

    call = await once_in_unit(db, metadata, scope=f"call:start:{user.id}", key=idempotency_key,
                              request=body.model_dump(mode="json"), create=create)
    servers, ttl = await request.app.state.ice.for_user(user.id)
    return _json({"call_id": call["id"], "ice_servers": servers, "ttl_s": ttl, "call": call},
                 201)


@router.get("")
async def list_calls(user: CurrentUser, db: DatabaseDep, limit: Limit = 20,
                     cursor: Cursor = None) -> JSONResponse:
    """The caller's call history, newest first: each call with its end reason and every
    participant's state (`missed`, `declined`, ...)."""
    before = (decode_cursor(cursor, "before") or {}).get("before")
    items = await db.run(functools.partial(commands.calls_of, user=user.id, before=before,
                                           limit=limit))
    next_cursor = encode_cursor({"before": items[-1]["id"]}) if len(items) == limit else None
    return _json({"items": items, "next_cursor": next_cursor})


@router.get("/{call_id}")
async def get_call(call_id: CallId, user: CurrentUser, db: DatabaseDep) -> JSONResponse:
    return _json(await db.run(lambda conn: commands.call_view(conn, call_id, user.id)))


@router.post("/{call_id}/decline")
async def decline(call_id: CallId, user: CurrentUser, request: Request) -> JSONResponse:
    """A callee will not answer (a phone's "decline" button, with no socket open)."""
    return _json(await calls_of(request).decline(user.id, call_id))


@router.post("/{call_id}/leave")
async def leave(call_id: CallId, user: CurrentUser, request: Request) -> JSONResponse:
    """Hang up without the socket (an app being closed)."""
    view = await calls_of(request).db.run(functools.partial(
        commands.call_view, call_id=call_id, viewer=user.id))
    if view["state"] == "ended":
        return _json(view)
    return _json(await calls_of(request).leave(user.id, call_id))
