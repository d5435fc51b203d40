"""Live streams over HTTP: create one, publish it over WHIP (RFC 9725), watch it over WHEP or
as HLS from the media bucket (through the gateway or the CDN).

The replica that takes a stream's WHIP ingest holds its media (`streams.node_id`). A WHEP
offer or the end of a stream that reaches another replica is passed to that one through Redis
(`Hub.request`), so no sticky routing is needed in front of the replicas.
"""

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from chassis.auth import CurrentUser
from chassis.db import DatabaseDep
from chassis.idempotency import IdempotencyKey, once_in_unit
from chassis.problems import Problem, not_found

from . import commands
from .actions import json_ready
from .models import metadata
from .studio import Studio, hls_url

router = APIRouter(prefix="/api/live", tags=["live"])
StreamId = Annotated[str, Path(pattern=r"^[0-9A-Za-z]{26}$")]
ViewerId = Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,64}$")]
SDP = "application/sdp"


class NewStream(BaseModel):
    title: str = Field(min_length=1, max_length=200)


def _urls(request: Request, stream_id: str) -> dict[str, Any]:
    settings = request.app.state.settings
    base = f"{settings.public_url.rstrip('/')}/api/live/{stream_id}"
    return {"whip_url": f"{base}/whip",
            "playback": {"hls_url": hls_url(settings, stream_id), "whep_url": f"{base}/whep"}}


def _view(request: Request, stream: dict[str, Any]) -> dict[str, Any]:
    shown = {k: stream[k] for k in ("id", "owner_id", "title", "state", "created_at",
                                    "started_at", "ended_at")}
    return json_ready(shown | _urls(request, stream["id"]))


async def _sdp_body(request: Request) -> str:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != SDP:
        raise Problem(415, "the body must be an SDP offer (Content-Type: application/sdp)",
                      errors=[{"field": "Content-Type", "message": SDP}])
    body = await request.body()
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise Problem(400, "sdp: not UTF-8 text", errors=[
            {"field": "sdp", "message": "not UTF-8 text"}]) from None


def _answer(sdp: str, location: str) -> Response:
    return Response(sdp, status_code=201, media_type=SDP, headers={"Location": location})


@router.post("", status_code=201)
async def create_stream(user: CurrentUser, db: DatabaseDep, request: Request,
                        body: Annotated[NewStream, Body()],
                        idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """A stream to publish: its WHIP URL (for the owner) and where viewers watch it."""
    stream = await once_in_unit(
        db, metadata, scope=f"live:create:{user.id}", key=idempotency_key,
        request=body.model_dump(mode="json"),
        create=lambda conn: json_ready(commands.new_stream(conn, user.id, body.title)))
    return JSONResponse({"stream_id": stream["id"], **_view(request, stream)}, status_code=201)


@router.get("/{stream_id}")
async def get_stream(stream_id: StreamId, user: CurrentUser, db: DatabaseDep,
                     request: Request) -> JSONResponse:
    return JSONResponse(_view(request, await db.run(
        lambda conn: commands.stream_of(conn, stream_id))))


@router.post("/{stream_id}/whip", status_code=201, response_class=Response)
async def whip(stream_id: StreamId, user: CurrentUser, db: DatabaseDep,
               request: Request) -> Response:
    """The owner's encoder offers its media; the answer starts the stream on this replica."""
    offer = await _sdp_body(request)
    studio: Studio = request.app.state.studio
    node = request.app.state.hub.node_id
    await db.run(functools.partial(commands.claim_stream, stream_id=stream_id, owner=user.id,
                                   node_id=node))
    try:
        answer = await studio.ingest(stream_id, offer)
    except BaseException:
        await db.run(functools.partial(commands.release_stream, stream_id=stream_id))
        raise
    return _answer(answer, f"/api/live/{stream_id}/whip/session")


@router.delete("/{stream_id}/whip/session", status_code=200)
async def end_stream(stream_id: StreamId, user: CurrentUser, db: DatabaseDep,
                     request: Request) -> JSONResponse:
    """The owner stops publishing (WHIP's DELETE on the session resource)."""
    stream = await db.run(lambda conn: commands.stream_of(conn, stream_id))
    if stream["owner_id"] != user.id:
        raise not_found("stream")
    if stream["state"] == "live":
        await _on_holder(request, stream, "end", {"stream_id": stream_id})
    return JSONResponse(_view(request, await db.run(
        lambda conn: commands.stream_of(conn, stream_id))))


@router.post("/{stream_id}/whep", status_code=201, response_class=Response)
async def whep(stream_id: StreamId, user: CurrentUser, db: DatabaseDep,
               request: Request) -> Response:
    """A viewer's offer to receive the stream over WebRTC; the answer comes from the replica
    that holds the stream."""
    offer = await _sdp_body(request)
    stream = await db.run(lambda conn: commands.stream_of(conn, stream_id))
    if stream["state"] != "live":
        raise Problem(409, "the stream is not live", state=stream["state"])
    result = await _on_holder(request, stream, "whep", {"stream_id": stream_id, "sdp": offer})
    return _answer(result["sdp"], f"/api/live/{stream_id}/viewers/{result['viewer_id']}")


@router.delete("/{stream_id}/viewers/{viewer_id}", status_code=204, response_class=Response)
async def stop_watching(stream_id: StreamId, viewer_id: ViewerId, user: CurrentUser,
                        db: DatabaseDep, request: Request) -> Response:
    stream = await db.run(lambda conn: commands.stream_of(conn, stream_id))
    if stream["state"] == "live":
        await _on_holder(request, stream, "leave", {"stream_id": stream_id,
                                                    "viewer_id": viewer_id})
    return Response(status_code=204)


async def _on_holder(request: Request, stream: dict[str, Any], op: str,
                     args: dict[str, Any]) -> dict[str, Any]:
    """Run `op` on the replica that holds the stream: here, or there through Redis."""
    hub = request.app.state.hub
    if stream["node_id"] == hub.node_id:
        return await hub.handlers[op](args)
    return await hub.request(stream["node_id"], op, args)


def handlers(studio: Studio) -> dict[str, Any]:
    """What this replica answers for the streams it holds (see `Hub.request`)."""

    async def watch(args: dict[str, Any]) -> dict[str, Any]:
        viewer_id, sdp = await studio.watch(args["stream_id"], args["sdp"])
        return {"viewer_id": viewer_id, "sdp": sdp}

    async def leave(args: dict[str, Any]) -> dict[str, Any]:
        await studio.leave(args["stream_id"], args["viewer_id"])
        return {}

    async def end(args: dict[str, Any]) -> dict[str, Any]:
        await studio.end(args["stream_id"])
        return {}

    return {"whep": watch, "leave": leave, "end": end}
