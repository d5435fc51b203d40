"""Chat over HTTP: /api/chat/channels and their messages (the WebSocket is in `ws`)."""

import functools
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from chassis.auth import CurrentUser
from chassis.db import DatabaseDep

from . import commands
from .actions import Chat, json_ready

router = APIRouter(prefix="/api/chat", tags=["chat"])
ID = r"^[0-9A-Za-z_-]{1,64}$"
ChannelId = Annotated[str, Path(pattern=ID)]
Seq = Annotated[int, Path(ge=1, le=2**31 - 1)]
Emoji = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[^\x00-\x20/]+$")]
UserId = Annotated[str, Field(pattern=ID)]


class NewChannel(BaseModel):
    kind: Literal["dm", "group"]
    member_ids: list[UserId] = Field(min_length=1, max_length=1000)
    name: str | None = Field(None, min_length=1, max_length=100)


class NewMembers(BaseModel):
    member_ids: list[UserId] = Field(min_length=1, max_length=1000)


class NewMessage(BaseModel):
    client_msg_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                               description="the client's id for it: a repeat returns the first")
    text: str


class MessageEdit(BaseModel):
    text: str


class ReadMarker(BaseModel):
    seq: int = Field(ge=0)


def _chat(request: Request) -> Chat:
    return request.app.state.chat


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(json_ready(body), status_code=status)


@router.post("/channels", status_code=201)
async def open_channel(body: NewChannel, user: CurrentUser, db: DatabaseDep,
                       request: Request) -> JSONResponse:
    """A new DM or group; the DM between the same two people is returned (200), not doubled."""
    settings = _chat(request).settings
    channel, new = await db.run(functools.partial(
        commands.open_channel, caller=user.id, kind=body.kind, member_ids=body.member_ids,
        name=body.name, members_max=settings.group_members_max))
    if new:
        await _chat(request).channel_changed(channel)
    return _json(channel, 201 if new else 200)


@router.get("/channels")
async def list_channels(user: CurrentUser, db: DatabaseDep) -> JSONResponse:
    """The caller's channels with `last_seq` and `unread_count`."""
    return _json({"items": await db.run(lambda conn: commands.channels_of(conn, user.id))})


@router.get("/channels/{channel_id}")
async def get_channel(channel_id: ChannelId, user: CurrentUser, db: DatabaseDep) -> JSONResponse:
    return _json(await db.run(lambda conn: commands.channel_view(conn, channel_id, user.id)))


@router.post("/channels/{channel_id}/members")
async def add_members(channel_id: ChannelId, body: NewMembers, user: CurrentUser,
                      db: DatabaseDep, request: Request) -> JSONResponse:
    """Add people to a group (any member may)."""
    return await _members(request, db, user.id, channel_id, add=body.member_ids, remove=[])


@router.delete("/channels/{channel_id}/members/{user_id}")
async def remove_member(channel_id: ChannelId, user_id: Annotated[str, Path(pattern=ID)],
                        user: CurrentUser, db: DatabaseDep, request: Request) -> Response:
    """Leave a group (your own id) or, as its owner, remove someone."""
    await _members(request, db, user.id, channel_id, add=[], remove=[user_id])
    return Response(status_code=204)


async def _members(request: Request, db: Any, caller: str, channel_id: str, *, add: list[str],
                   remove: list[str]) -> JSONResponse:
    settings = _chat(request).settings
    channel = await db.run(functools.partial(
        commands.change_members, channel_id=channel_id, caller=caller, add=add, remove=remove,
        members_max=settings.group_members_max))
    if channel:
        await _chat(request).channel_changed(channel, also=remove)
    return _json(channel)


@router.get("/channels/{channel_id}/messages")
async def messages(channel_id: ChannelId, user: CurrentUser, db: DatabaseDep, request: Request,
                   after_seq: Annotated[int | None, Query(ge=0)] = None,
                   before_seq: Annotated[int | None, Query(ge=1)] = None,
                   limit: Annotated[int, Query(ge=1, le=200)] = 50) -> JSONResponse:
    """Messages in seq order: after `after_seq`, or the latest ones before `before_seq`."""
    items = await db.run(functools.partial(
        commands.history, channel_id=channel_id, caller=user.id, after_seq=after_seq,
        before_seq=before_seq, limit=limit))
    return _json({"items": items})


@router.post("/channels/{channel_id}/messages", status_code=201)
async def post_message(channel_id: ChannelId, body: NewMessage, user: CurrentUser,
                       request: Request) -> JSONResponse:
    """Post a message; the same `client_msg_id` again returns the first (200)."""
    message, new = await _chat(request).send(user, channel_id, body.client_msg_id, body.text)
    return _json(message, 201 if new else 200)


@router.patch("/channels/{channel_id}/messages/{seq}")
async def edit_message(channel_id: ChannelId, seq: Seq, body: MessageEdit, user: CurrentUser,
                       request: Request) -> JSONResponse:
    return _json(await _chat(request).edit(user, channel_id, seq, body.text))


@router.delete("/channels/{channel_id}/messages/{seq}", status_code=204)
async def delete_message(channel_id: ChannelId, seq: Seq, user: CurrentUser,
                         request: Request) -> Response:
    """Delete your message; it stays as a tombstone in its place."""
    await _chat(request).delete(user, channel_id, seq)
    return Response(status_code=204)


@router.put("/channels/{channel_id}/messages/{seq}/reactions/{emoji}", status_code=204)
async def add_reaction(channel_id: ChannelId, seq: Seq, emoji: Emoji, user: CurrentUser,
                       request: Request) -> Response:
    await _chat(request).react(user, channel_id, seq, emoji, True)
    return Response(status_code=204)


@router.delete("/channels/{channel_id}/messages/{seq}/reactions/{emoji}", status_code=204)
async def remove_reaction(channel_id: ChannelId, seq: Seq, emoji: Emoji, user: CurrentUser,
                          request: Request) -> Response:
    await _chat(request).react(user, channel_id, seq, emoji, False)
    return Response(status_code=204)


@router.put("/channels/{channel_id}/read")
async def mark_read(channel_id: ChannelId, body: ReadMarker, user: CurrentUser,
                    request: Request) -> JSONResponse:
    """Move your read marker forward (to at most the last seq)."""
    return _json({"last_read_seq": await _chat(request).read(user, channel_id, body.seq)})
