"""Media over HTTP (/api/media): the limits, upload requests, and the records' states.

An upload goes straight from the client to the private uploads bucket with a presigned POST
whose policy pins the key, the content type and the size range; the API never carries the
bytes. S3 then announces the object to the media worker (`media_worker`), which checks and
processes it and settles the record here (`settle`): ready with its variants, or failed with
a reason. A post that carries media still being processed is published when the last of them
settles.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

import boto3
from botocore.config import Config
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection
from ulid import ULID

from chassis.auth import CurrentUser
from chassis.db import DatabaseDep, utcnow
from chassis.problems import invalid, not_found

from .mediaproc import ProcessingLimits
from .models import Media
from .settings import PostSettings

router = APIRouter(prefix="/api/media", tags=["media"])
ORIGINALS = "originals/"  # the uploads bucket's prefix the worker is told about
MEDIA_PREFIX = "media/"  # the media bucket's prefix, served as MEDIA_BASE_URL
_MEDIA = Media.__table__
MediaId = Annotated[str, Path(pattern=r"^[0-9A-Za-z]{26}$", description="the media's id")]


@dataclass(frozen=True)
class MediaLimits:
    """What uploads may be: every limit a client is held to, stated in one place."""

    types: dict[str, tuple[str, int]]  # content type -> (kind, largest size in bytes)
    alt_text_max: int
    upload_expiry_s: int
    processing: ProcessingLimits
    per_post: tuple[tuple[str, int], ...] = (("image", 4), ("video", 1), ("audio", 1))

    @classmethod
    def from_settings(cls, settings: PostSettings) -> "MediaLimits":
        types = {t: ("image", settings.image_max_bytes) for t in settings.image_types}
        types |= {t: ("video", settings.video_max_bytes) for t in settings.video_types}
        types |= {t: ("audio", settings.audio_max_bytes) for t in settings.audio_types}
        return cls(types, settings.alt_text_max, settings.upload_expiry_s, ProcessingLimits())

    def as_json(self) -> dict[str, Any]:
        kinds: dict[str, dict[str, Any]] = {}
        for content_type, (kind, max_bytes) in self.types.items():
            entry = kinds.setdefault(kind, {"types": [], "max_bytes": max_bytes,
                                            "per_post": dict(self.per_post)[kind]})
            entry["types"].append(content_type)
        p = self.processing
        return {"kinds": kinds, "alt_text_max": self.alt_text_max,
                "per_post": "up to 4 images, or 1 video, or 1 audio",
                "upload_expiry_s": self.upload_expiry_s,
                "image": {"max_side": p.max_image_side, "max_pixels": p.max_image_pixels},
                "video": {"max_side": p.max_video_side, "max_duration_s": p.max_duration_s,
                          "renditions": list(p.renditions)},
                "audio": {"max_duration_s": p.max_duration_s}}

    def check(self, content_type: str, size: int, alt_text: str | None) -> str:
        """The kind of an upload that keeps to the limits; else a problem naming the field."""
        if content_type not in self.types:
            raise invalid("content_type", f"must be one of {', '.join(self.types)}")
        kind, max_bytes = self.types[content_type]
        if size > max_bytes:
            raise invalid("size", f"{kind} uploads may be at most {max_bytes} bytes", 413)
        if alt_text is not None and len(alt_text) > self.alt_text_max:
            raise invalid("alt_text", f"must be at most {self.alt_text_max} characters")
        return kind


class UploadRequest(BaseModel):
    content_type: str = Field(max_length=100, description="one of GET /api/media/limits")
    size: int = Field(gt=0, description="bytes; the upload must not be larger")
    filename: str | None = Field(None, max_length=255)
    alt_text: str | None = Field(None, description="a description for people who cannot see it")


class Presigner:
    """Signs upload forms for the uploads bucket (no network: boto3 signs locally)."""

    def __init__(self, settings: PostSettings) -> None:
        endpoint = settings.upload_endpoint_url or settings.aws_endpoint_url
        kwargs = settings.aws_client_kwargs() | ({"endpoint_url": endpoint} if endpoint else {})
        self._s3 = boto3.session.Session().client("s3", config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint else "virtual"}), **kwargs)
        self._bucket = settings.uploads_bucket

    def form(self, key: str, content_type: str, size: int, expiry_s: int) -> dict[str, Any]:
        """A presigned POST for exactly this key and type, of 1..size bytes."""
        return self._s3.generate_presigned_post(
            self._bucket, key, Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", 1, size]],
            ExpiresIn=expiry_s)


def view(row: Any) -> dict[str, Any]:
    """A media record as clients see it (the fields of `events.MediaView`)."""
    m = row._mapping if hasattr(row, "_mapping") else row
    out = {"media_id": m["id"], "kind": m["kind"], "status": m["status"],
           "alt_text": m["alt_text"], "width": m["width"], "height": m["height"],
           "duration_s": m["duration_s"], "blurhash": m["blurhash"],
           "variants": dict(m["variants"] or {})}
    if m["error"]:
        out["error"] = m["error"]
    return out


@router.get("/limits")
async def limits(request: Request) -> dict[str, Any]:
    """Accepted types and sizes: the only place the limits are stated."""
    return request.app.state.media_limits.as_json()


@router.post("", status_code=201)
async def request_upload(body: UploadRequest, user: CurrentUser, db: DatabaseDep,
                         request: Request) -> dict[str, Any]:
    """Reserve a media id and return the form to upload its file with (to S3, not here)."""
    media_limits: MediaLimits = request.app.state.media_limits
    alt_text = body.alt_text.strip() or None if body.alt_text is not None else None
    kind = media_limits.check(body.content_type, body.size, alt_text)
    media_id, now = str(ULID()), utcnow()
    row = {"id": media_id, "owner_id": user.id, "kind": kind, "content_type": body.content_type,
           "size": body.size, "filename": body.filename, "alt_text": alt_text,
           "status": "pending", "error": None, "width": None, "height": None,
           "duration_s": None, "blurhash": None, "variants": {}, "post_id": None,
           "created_at": now, "updated_at": now}
    await db.run(lambda conn: conn.execute(insert(_MEDIA), row))
    form = request.app.state.presigner.form(ORIGINALS + media_id, body.content_type, body.size,
                                            media_limits.upload_expiry_s)
    expires_at = now + timedelta(seconds=media_limits.upload_expiry_s)
    return {"media_id": media_id, "kind": kind, "status": "pending",
            "upload": {"url": form["url"], "fields": form["fields"]},
            "expires_at": expires_at.isoformat().replace("+00:00", "Z")}


@router.get("/{media_id}")
async def get_media(media_id: MediaId, user: CurrentUser, db: DatabaseDep) -> dict[str, Any]:
    """An upload's state and, once ready, its variants (its owner only; posts show the rest)."""
    row = await db.run(lambda conn: conn.execute(_BY_ID, {"id": media_id}).first())
    if row is None or row.owner_id != user.id:
        raise not_found("media")
    return view(row)


# --- the units the post commands and the worker run -------------------------------------

_BY_ID = select(_MEDIA).where(_MEDIA.c.id == bindparam("id"))
_OF_IDS = (select(_MEDIA).where(_MEDIA.c.id.in_(bindparam("ids", expanding=True)))
           .with_for_update())
_OF_POST = select(_MEDIA).where(_MEDIA.c.post_id == bindparam("post_id"))
_ATTACH = (update(_MEDIA).where(_MEDIA.c.id.in_(bindparam("ids", expanding=True)))
           .values(post_id=bindparam("post_id")))


def attach(conn: Connection, media_ids: list[str], *, owner_id: str, post_id: str,
           limits: MediaLimits) -> tuple[list[dict[str, Any]], bool]:
    """Attach the author's uploads to a new post; returns the views of those ready, and
    whether some are still being processed (the post then waits for them)."""
    if not media_ids:
        return [], False
    rows = {r.id: r for r in conn.execute(_OF_IDS, {"ids": media_ids})}
    for media_id in media_ids:
        row = rows.get(media_id)
        if row is None or row.owner_id != owner_id:
            raise invalid("media_ids", f"{media_id} is not an upload of yours")
        if row.post_id is not None:
            raise invalid("media_ids", f"{media_id} is attached to another post already")
        if row.status == "failed":
            raise invalid("media_ids", f"{media_id} could not be processed: {row.error}")
    kinds = [rows[i].kind for i in media_ids]
    allowed = dict(limits.per_post)
    if len(set(kinds)) > 1 or len(kinds) > allowed[kinds[0]]:
        raise invalid("media_ids", "a post carries up to 4 images, or 1 video, or 1 audio")
    conn.execute(_ATTACH, {"ids": media_ids, "post_id": post_id})
    ready = [view(rows[i]) for i in media_ids if rows[i].status == "ready"]
    return ready, len(ready) < len(media_ids)


def of_post(conn: Connection, post_id: str) -> list[Any]:
    """The uploads attached to a post."""
    return list(conn.execute(_OF_POST, {"post_id": post_id}))
