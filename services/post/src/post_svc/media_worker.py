"""The media worker: its own process (`uvicorn --factory post_svc.media_worker:build_app`),
beside the post service's API, on the same database.

S3 announces each upload on the `post-media-uploads` queue. For each, the worker marks the
record `processing`, fetches the original, checks and processes it (`mediaproc`, in a
thread), puts every variant into the public media bucket, and only then settles the record
`ready` with its variants and `media.ready` in one transaction; bad media settle `failed`
with the reason and `media.failed`, and nothing of them is served. A repeated notification,
or one for an upload that has settled, changes nothing. If the worker dies mid-way, the
message returns after its visibility timeout and the upload is processed again: variant keys
are fixed per upload, so the second run overwrites the first's.

Clients upload under `originals/` only (their forms pin the key). Under `recordings/` the call
service puts its call recordings, for which no record exists yet: the worker makes one from
the object itself (`recording_record`: the owner from the `owner` user metadata, the kind from
the Content-Type, the size from the object) and then processes it like any upload. An object
whose metadata does not say whose it is, or is not audio or video, has no record to fail: its
message fails and ends in the queue's DLQ after the usual retries, logged each time.
"""

import asyncio
import functools
import logging
import re
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError
from fastapi import FastAPI
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from chassis.app import ServiceSpec, create_app
from chassis.consumer import Apply, Delivery
from chassis.db import utcnow
from chassis.events import Envelope

from . import events, mediaproc
from .commands import emit, publish_waiting
from .media import MEDIA_PREFIX, ORIGINALS, MediaLimits, view
from .models import Base, Media
from .settings import PostSettings

log = logging.getLogger("post.media_worker")
UPLOADS_QUEUE = "post-media-uploads"
UPLOADED = "upload.received"  # the envelope type the worker gives an S3 notification
CACHE_FOREVER = "public, max-age=31536000, immutable"  # a variant's URL never changes content
RECORDINGS = "recordings/"  # the uploads bucket's prefix only the call service writes to
RECORDING_KINDS = ("video", "audio")
_MEDIA_ID = re.compile(r"[0-9A-Za-z]{26}")
_USER_ID = re.compile(r"[\w.:@-]{1,64}", re.ASCII)

_MEDIA = Media.__table__
_FOR_SETTLING = select(_MEDIA).where(_MEDIA.c.id == bindparam("id")).with_for_update()
_UPDATE = update(_MEDIA).where(_MEDIA.c.id == bindparam("media_id"))
UNSETTLED = ("pending", "processing")
_ABANDONED = (select(_MEDIA.c.id).where(_MEDIA.c.status == "pending",
                                        _MEDIA.c.created_at < bindparam("before"))
              .order_by(_MEDIA.c.created_at).limit(100))


class RecordingRefused(ValueError):
    """A recording's object does not say what it is: there is no record to fail, so its
    message fails (and ends in the DLQ)."""


def decode_upload(delivery: Delivery) -> Envelope | None:
    """An S3 notification as an envelope about one upload (its id is the media id, so the
    inbox takes repeats); S3's test event and foreign keys give None."""
    records = delivery.body.get("Records")
    if not records:
        return None
    if len(records) > 1:
        log.warning("an S3 notification with %d records; the first is handled", len(records))
    record = records[0]
    key = unquote_plus(record["s3"]["object"]["key"])
    prefix = next((p for p in (ORIGINALS, RECORDINGS) if key.startswith(p)), None)
    if prefix is None:
        return None
    media_id = key.removeprefix(prefix)
    if prefix == RECORDINGS and not _MEDIA_ID.fullmatch(media_id):
        raise RecordingRefused(f"{key} does not name a media id")
    return Envelope(id=media_id, type=UPLOADED, version=1, producer="s3",
                    occurred_at=datetime.fromisoformat(record["eventTime"]),
                    subject=f"media:{media_id}",
                    data={"bucket": record["s3"]["bucket"]["name"], "key": key,
                          "size": int(record["s3"]["object"].get("size", 0))})


def recording_record(media_id: str, head: dict[str, Any],
                     limits: MediaLimits) -> dict[str, Any]:
    """The media record of a recording, from its object's HEAD: whose it is (user metadata
    `owner`), its type (Content-Type: an accepted audio or video type) and its size."""
    metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    owner = metadata.get("owner", "").strip()
    if not _USER_ID.fullmatch(owner):
        raise RecordingRefused(f"recording {media_id} has no valid `owner` metadata")
    content_type = (head.get("ContentType") or "").split(";")[0].strip().lower()
    kind = limits.types.get(content_type, ("", 0))[0]
    if kind not in RECORDING_KINDS:
        raise RecordingRefused(f"recording {media_id} has the Content-Type {content_type!r}, "
                               "not an accepted audio or video type")
    now = utcnow()
    return {"id": media_id, "owner_id": owner, "kind": kind, "content_type": content_type,
            "size": int(head["ContentLength"]), "filename": None, "alt_text": None,
            "status": "pending", "error": None, "width": None, "height": None,
            "duration_s": None, "blurhash": None, "variants": {}, "post_id": None,
            "created_at": now, "updated_at": now}


def adopt_recording(conn: Connection, record: dict[str, Any]) -> None:
    """Insert a recording's record unless it exists (a repeated notification, a re-upload);
    an existing record of someone else refuses the recording."""
    existing = conn.execute(_FOR_SETTLING, {"id": record["id"]}).first()
    if existing is None:
        try:
            with conn.begin_nested():
                conn.execute(insert(_MEDIA), record)
            return
        except IntegrityError:  # a concurrent delivery of the same notification was first
            existing = conn.execute(_FOR_SETTLING, {"id": record["id"]}).one()
    if existing.owner_id != record["owner_id"]:
        raise RecordingRefused(f"media {record['id']} exists already and is someone else's")


def begin(conn: Connection, media_id: str) -> dict[str, Any] | None:
    """Mark an upload as being processed; None if there is no such upload or it has settled
    (a repeated notification, a second upload to the same key)."""
    row = conn.execute(_FOR_SETTLING, {"id": media_id}).first()
    if row is None or row.status not in UNSETTLED:
        return None
    conn.execute(_UPDATE, {"media_id": media_id, "status": "processing",
                           "updated_at": utcnow()})
    return dict(row._mapping)


def settle(conn: Connection, media_id: str, *, error: str | None = None,
           facts: dict[str, Any] | None = None) -> None:
    """Record the outcome (ready with `facts`, or failed with `error`) and its event, once;
    then publish the post that waited for this upload if nothing else holds it back."""
    row = conn.execute(_FOR_SETTLING, {"id": media_id}).first()
    if row is None or row.status not in UNSETTLED:
        return
    changes = {"status": "failed" if error else "ready", "error": error,
               "updated_at": utcnow(), **(facts or {})}
    conn.execute(_UPDATE, {"media_id": media_id, **changes})
    event = events.MediaFailed if error else events.MediaReady
    emit(conn, event(**view({**row._mapping, **changes}), owner_id=row.owner_id,
                     content_type=row.content_type),
         subject=f"media:{media_id}", actor=row.owner_id)
    if row.post_id is not None:
        publish_waiting(conn, row.post_id)


def give_up_abandoned(conn: Connection, before: datetime) -> int:
    """Fail uploads whose file never came (the form expired long ago), so that the posts
    waiting for them go out; returns how many."""
    ids = list(conn.execute(_ABANDONED, {"before": before}).scalars())
    for media_id in ids:
        settle(conn, media_id, error="the file was never uploaded")
    return len(ids)


async def sweep(app: FastAPI, settings: PostSettings) -> None:
    """Give up abandoned uploads now and then (every worker may; settling is idempotent)."""
    while True:
        try:
            before = utcnow() - timedelta(seconds=settings.media_abandoned_after_s)
            given_up = await app.state.db.run(functools.partial(give_up_abandoned,
                                                                before=before))
            if given_up:
                log.info("gave up %d uploads whose file never came", given_up)
        except Exception:
            log.exception("sweeping abandoned uploads failed; trying again later")
        await asyncio.sleep(settings.media_sweep_interval_s)


class MediaWorker:
    """Processes one upload per notification; see the module's docstring."""

    def __init__(self, app: FastAPI, settings: PostSettings) -> None:
        self._app = app
        self._settings = settings
        self._limits = MediaLimits.from_settings(settings)

    async def handle(self, envelope: Envelope) -> None:
        media_id = envelope.subject.removeprefix("media:")
        db = self._app.state.db
        s3 = self._app.state.s3
        if envelope.data["key"].startswith(RECORDINGS):
            await self._adopt(s3, media_id, envelope.data["key"])
        record = await db.run(lambda conn: begin(conn, media_id))
        if record is None:
            log.info("upload %s is unknown or settled already; nothing to do", media_id)
            return
        with tempfile.TemporaryDirectory(prefix="media-") as tmp:
            original, out = Path(tmp) / "original", Path(tmp) / "out"
            out.mkdir()
            try:
                await self._fetch(s3, envelope.data["key"], original, record)
                processed = await asyncio.to_thread(
                    mediaproc.process, original, record["content_type"], out,
                    self._limits.processing)
            except mediaproc.MediaRejected as rejected:
                reason = rejected.reason
                log.info("upload %s refused: %s", media_id, reason)
                await db.run(lambda conn: settle(conn, media_id, error=reason))
                return
            await self._publish(s3, media_id, out, processed)
        base = f"{self._settings.media_base_url.rstrip('/')}/{media_id}/"
        facts = {"width": processed.width, "height": processed.height,
                 "duration_s": processed.duration_s, "blurhash": processed.blurhash,
                 "variants": {name: base + path for name, path in processed.variants.items()}}
        await db.run(lambda conn: settle(conn, media_id, facts=facts))

    async def _adopt(self, s3: Any, media_id: str, key: str) -> None:
        """Make the record of a recording from its object, once; an object that is gone
        leaves nothing to make (the notification is then about an unknown upload)."""
        try:
            head = await s3.head_object(Bucket=self._settings.uploads_bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                raise
            log.warning("recording %s is gone from the uploads bucket", key)
            return
        record = recording_record(media_id, head, self._limits)
        await self._app.state.db.run(lambda conn: adopt_recording(conn, record))
        log.info("recording %s of %s is media %s", key, record["owner_id"], media_id)

    async def _fetch(self, s3: Any, key: str, path: Path, record: dict[str, Any]) -> None:
        """Download the original; its real size is held to the limit and the declared size
        (S3 enforces the form's policy; moto does not, so the worker checks too)."""
        try:
            response = await s3.get_object(Bucket=self._settings.uploads_bucket, Key=key)
        except s3.exceptions.NoSuchKey as exc:
            raise mediaproc.MediaRejected("the upload is gone from the uploads bucket") from exc
        size, largest = response["ContentLength"], self._limits.types[record["content_type"]][1]
        if size == 0:
            raise mediaproc.MediaRejected("the file is empty")
        if size > record["size"]:
            raise mediaproc.MediaRejected(
                f"the file has {size} bytes, more than the {record['size']} declared")
        if size > largest:
            raise mediaproc.MediaRejected(
                f"the file has {size} bytes; {record['kind']} may have at most {largest}")
        with path.open("wb") as file:
            async for chunk in response["Body"].iter_chunks(1 << 20):
                file.write(chunk)

    async def _publish(self, s3: Any, media_id: str, out: Path,
                       processed: mediaproc.Processed) -> None:
        """Put every variant file into the public bucket, four at a time."""
        limit = asyncio.Semaphore(4)

        async def put(file: mediaproc.OutputFile) -> None:
            async with limit:
                await s3.put_object(
                    Bucket=self._settings.media_bucket,
                    Key=f"{MEDIA_PREFIX}{media_id}/{file.path}",
                    Body=(out / file.path).read_bytes(), ContentType=file.content_type,
                    CacheControl=CACHE_FOREVER)

        await asyncio.gather(*(put(f) for f in processed.files))


def _nothing(conn: Connection, envelope: Envelope) -> None:
    """The worker's units commit on their own; the inbox row marks the upload handled."""


def build_app(settings: PostSettings | None = None) -> FastAPI:
    """The media worker as an app: health, readiness and metrics like every service."""
    settings = settings or PostSettings()
    settings = settings.model_copy(update={
        "consumer_concurrency": settings.media_worker_concurrency})
    holder: dict[str, MediaWorker] = {}

    async def handle(envelope: Envelope) -> None:
        await holder["worker"].handle(envelope)

    async def start(app: FastAPI) -> None:
        app.state.s3 = await app.state.exit_stack.enter_async_context(
            app.state.aws.client("s3", **settings.aws_client_kwargs()))
        holder["worker"] = MediaWorker(app, settings)
        app.state.tasks["abandoned-uploads"] = asyncio.create_task(sweep(app, settings))

    return create_app(settings, ServiceSpec(
        name="media-worker", metadata=Base.metadata, routers=[], on_startup=start,
        consumers={UPLOADS_QUEUE: {UPLOADED: Apply(_nothing, before=handle)}},
        decoders={UPLOADS_QUEUE: decode_upload},
        description="Checks and processes uploads into the variants the media bucket serves."))
