"""Post commands over HTTP: /api/posts (create, edit, delete, like)."""

import functools
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection

from chassis.auth import CurrentUser
from chassis.db import DatabaseDep
from chassis.idempotency import IdempotencyKey, once_in_unit

from . import commands, domain
from .events import MediaView, Visibility
from .models import Base

router = APIRouter(prefix="/api/posts", tags=["posts"])

# Ids are ULIDs here and opaque strings elsewhere; anything else is refused before it reaches
# the database (a NUL would fail there rather than find nothing).
ID_PATTERN = r"^[0-9A-Za-z_-]{1,64}$"
PostId = Annotated[str, Path(pattern=ID_PATTERN, description="the post's id")]
ReferenceId = Annotated[str, Field(pattern=ID_PATTERN)]


class NewPost(BaseModel):
    text: str = Field(description="1-5,000 characters after trimming")
    visibility: Visibility = "public"
    reply_to: ReferenceId | None = Field(None, description="id of the post this replies to")
    media_ids: list[ReferenceId] = Field(default_factory=list, description="up to 4")
    content_warning: str | None = Field(None, description="up to 500 characters")


class PostEdit(BaseModel):
    text: str | None = Field(None, description="the new text; left out, it stays")
    content_warning: str | None = Field(None, description="null clears it; left out, it stays")


class PostView(BaseModel):
    """A post as its author's write returns it."""

    id: str
    author_id: str
    text: str
    visibility: Visibility
    reply_to: str | None
    media_ids: list[str]
    media: list[MediaView] = []
    published: bool = Field(True, description="false until the media it carries are processed")
    content_warning: str | None
    hashtags: list[str]
    mentions: list[str]
    version: int
    created_at: datetime
    edited_at: datetime | None


async def _limits(request: Request) -> domain.Limits:
    return request.app.state.limits


LimitsDep = Annotated[domain.Limits, Depends(_limits)]


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post("", status_code=201, response_model=PostView)
async def create_post(body: NewPost, user: CurrentUser, db: DatabaseDep, limits: LimitsDep,
                      request: Request, idempotency_key: IdempotencyKey = None) -> Response:
    """Publish a post or a reply; a repeat with the same Idempotency-Key returns the first."""
    draft = domain.draft(text=body.text, visibility=body.visibility, reply_to=body.reply_to,
                         media_ids=body.media_ids, content_warning_text=body.content_warning,
                         limits=limits)

    def create(conn: Connection) -> dict[str, Any]:
        return commands.view(commands.create_post(
            conn, author_id=user.id, author_username=user.username, draft=draft,
            media_limits=request.app.state.media_limits))

    view = await once_in_unit(db, Base.metadata, scope=f"post:create:{user.id}",
                              key=idempotency_key, request=body.model_dump(mode="json"),
                              create=create)
    return _json(view, 201)


@router.patch("/{post_id}", response_model=PostView)
async def edit_post(post_id: PostId, body: PostEdit, user: CurrentUser, db: DatabaseDep,
                    limits: LimitsDep) -> Response:
    """Change the text or content warning (author only); earlier versions are kept."""
    revision = domain.revise(given=body.model_fields_set, text=body.text,
                             content_warning_text=body.content_warning, limits=limits)
    state = await db.run(functools.partial(commands.edit_post, post_id=post_id, caller=user.id,
                                           revision=revision))
    return _json(commands.view(state), 200)


@router.delete("/{post_id}", status_code=204, response_class=Response)
async def delete_post(post_id: PostId, user: CurrentUser, db: DatabaseDep) -> Response:
    """Delete a post (author only); it answers 404 afterwards."""
    await db.run(functools.partial(commands.delete_post, post_id=post_id, caller=user.id))
    return Response(status_code=204)


@router.put("/{post_id}/like", status_code=204, response_class=Response)
async def like_post(post_id: PostId, user: CurrentUser, db: DatabaseDep) -> Response:
    """Like a post (repeating it changes nothing)."""
    await db.run(functools.partial(commands.like_post, post_id=post_id, caller=user.id,
                                   caller_username=user.username))
    return Response(status_code=204)


@router.delete("/{post_id}/like", status_code=204, response_class=Response)
async def unlike_post(post_id: PostId, user: CurrentUser, db: DatabaseDep) -> Response:
    """Take back a like (repeating it changes nothing)."""
    await db.run(functools.partial(commands.unlike_post, post_id=post_id, caller=user.id))
    return Response(status_code=204)
