"""Profiles and graph lists: /api/profiles/*."""

from datetime import datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, Field
from sqlalchemy import Select, and_, not_, or_, select

from chassis.auth import CurrentUser
from chassis.cache import ViewCache
from chassis.db import Database, DatabaseDep, utcnow
from chassis.events import new_event
from chassis.outbox import add_event
from chassis.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from chassis.problems import not_found

from . import avatars, graph
from .domain import BIO_MAX, DISPLAY_NAME_MAX
from .events import PRODUCER, ProfileUpdated
from .models import Base, Follow, Profile, Upload

router = APIRouter(prefix="/api/profiles", tags=["profiles"])
OUTBOX = Base.metadata.tables["outbox"]
Side = Literal["followers", "following"]


class RelationshipView(BaseModel):
    following: bool
    followed_by: bool
    blocking: bool
    muting: bool


class ProfileView(BaseModel):
    user_id: str
    username: str
    display_name: str
    bio: str
    avatar_url: str | None
    followers_count: int
    following_count: int
    posts_count: int
    created_at: datetime
    relationship: RelationshipView | None = Field(
        None, description="how the caller stands to this user (absent on one's own profile)")


class ProfileEdit(BaseModel):
    display_name: str | None = Field(None, min_length=1, max_length=DISPLAY_NAME_MAX)
    bio: str | None = Field(None, max_length=BIO_MAX)
    avatar_media_id: str | None = Field(None, min_length=1, max_length=64)


def _view(profile: Profile, relationship: RelationshipView | None = None) -> ProfileView:
    return ProfileView(
        user_id=profile.user_id, username=profile.username, display_name=profile.display_name,
        bio=profile.bio, avatar_url=profile.avatar_url, followers_count=profile.followers_count,
        following_count=profile.following_count, posts_count=profile.posts_count,
        created_at=profile.created_at, relationship=relationship)


async def _cache(request: Request) -> ViewCache:
    return request.app.state.profile_cache


CacheDep = Annotated[ViewCache, Depends(_cache)]


async def _base_view(db: Database, cache: ViewCache, user_id: str) -> dict | None:
    """The profile as anyone sees it (no relationship), from the cache or the database."""

    async def load() -> bytes | None:
        async with db.sessions() as session:
            profile = await session.get(Profile, user_id)
        return _view(profile).model_dump_json().encode() if profile else None

    raw = await cache.get_or_load(user_id, load)
    return orjson.loads(raw) if raw else None


async def _visible(db: Database, cache: ViewCache, viewer: str,
                   user_id: str | None) -> Response:
    """The profile as `viewer` may see it: 404 if missing or if its owner blocked the viewer."""
    view = await _base_view(db, cache, user_id) if user_id else None
    if view is None:
        raise not_found("user")
    if user_id != viewer:
        async with db.sessions() as session:
            state = await graph.relationship(session, viewer, user_id)
        if state.blocked_by:
            raise not_found("user")
        view["relationship"] = {"following": state.following, "followed_by": state.followed_by,
                                "blocking": state.blocking, "muting": state.muting}
    return Response(orjson.dumps(view), media_type="application/json")


@router.get("/me", response_model=ProfileView)
async def get_me(user: CurrentUser, db: DatabaseDep, cache: CacheDep) -> Response:
    """The caller's own profile."""
    return await _visible(db, cache, user.id, user.id)


@router.patch("/me", response_model=ProfileView)
async def edit_me(body: ProfileEdit, user: CurrentUser, db: DatabaseDep,
                  cache: CacheDep) -> ProfileView:
    """Change display name, bio or avatar; fields left out stay as they are."""
    async with db.transaction() as session:
        # Locked: a `media.ready` handled meanwhile either finds the new avatar_media_id or
        # has stored the upload that the lookup below then finds (avatars.settled locks too).
        profile = await session.get(Profile, user.id, with_for_update=True)
        if profile is None:
            raise not_found("user")
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        if "avatar_media_id" in changes and (changes["avatar_media_id"] != profile.avatar_media_id
                                             or profile.avatar_url is None):
            # Shown at once if the upload is ready; else when the post service says it is.
            upload = await session.get(Upload, changes["avatar_media_id"])
            profile.avatar_url = avatars.avatar_url_for(upload, user.id)
        for field, value in changes.items():
            setattr(profile, field, value)
        profile.updated_at = utcnow()
        await add_event(session, OUTBOX, new_event(
            ProfileUpdated(user_id=profile.user_id, username=profile.username,
                           display_name=profile.display_name, bio=profile.bio,
                           avatar_media_id=profile.avatar_media_id, avatar_url=profile.avatar_url),
            producer=PRODUCER, subject=f"user:{user.id}", actor=user.id))
    await cache.forget(user.id)
    return _view(profile)


@router.get("/by-username/{username}", response_model=ProfileView)
async def get_by_username(username: str, user: CurrentUser, db: DatabaseDep,
                          cache: CacheDep) -> Response:
    """A profile by username."""
    async with db.sessions() as session:
        user_id = await session.scalar(select(Profile.user_id).where(Profile.username == username))
    return await _visible(db, cache, user.id, user_id)


@router.get("/{user_id}", response_model=ProfileView)
async def get_profile(user_id: str, user: CurrentUser, db: DatabaseDep,
                      cache: CacheDep) -> Response:
    """A profile by user id."""
    return await _visible(db, cache, user.id, user_id)


def _edge_routes(name: str, add: graph.Command, remove: graph.Command) -> None:
    async def put(user_id: str, user: CurrentUser, db: DatabaseDep, cache: CacheDep) -> Response:
        await graph.change(db, add, actor=user.id, target=user_id)
        await cache.forget(user.id, user_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    async def delete(user_id: str, user: CurrentUser, db: DatabaseDep,
                     cache: CacheDep) -> Response:
        await graph.change(db, remove, actor=user.id, target=user_id)
        await cache.forget(user.id, user_id)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    put.__doc__ = f"{name.capitalize()} this user (repeating it changes nothing)."
    delete.__doc__ = f"Undo {name} (repeating it changes nothing)."
    for method, endpoint in (("PUT", put), ("DELETE", delete)):
        router.add_api_route(f"/{{user_id}}/{name}", endpoint, methods=[method],
                             status_code=204, response_class=Response,
                             name=f"{method.lower()}_{name}")


_edge_routes("follow", graph.follow, graph.unfollow)
_edge_routes("block", graph.block, graph.unblock)
_edge_routes("mute", graph.mute, graph.unmute)


def _list_query(viewer: str, user_id: str, side: Side) -> Select:
    other = Follow.follower_id if side == "followers" else Follow.followee_id
    mine = Follow.followee_id if side == "followers" else Follow.follower_id
    return (select(Profile, Follow.created_at)
            .join(Follow, other == Profile.user_id)
            .where(mine == user_id, not_(graph.blocked_either_way(viewer, Profile.user_id))))


async def _graph_page(db: Database, viewer: str, user_id: str, side: Side, limit: int,
                      cursor: str | None) -> Page[ProfileView]:
    position = decode_cursor(cursor, "t", "id")
    async with db.sessions() as session:
        profile = await session.get(Profile, user_id)
        if profile is None or (user_id != viewer and
                               (await graph.relationship(session, viewer, user_id)).blocked_by):
            raise not_found("user")
        query = _list_query(viewer, user_id, side)
        if position:
            at = datetime.fromisoformat(position["t"])
            query = query.where(or_(
                Follow.created_at < at,
                and_(Follow.created_at == at, Profile.user_id < position["id"])))
        rows = (await session.execute(
            query.order_by(Follow.created_at.desc(), Profile.user_id.desc())
            .limit(limit + 1))).all()
    items = [_view(profile) for profile, _ in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last, followed_at = rows[limit - 1]
        next_cursor = encode_cursor({"t": followed_at.isoformat(), "id": last.user_id})
    return Page[ProfileView](items=items, next_cursor=next_cursor)


@router.get("/{user_id}/followers", response_model=Page[ProfileView])
async def followers(user_id: str, user: CurrentUser, db: DatabaseDep, limit: Limit = 20,
                    cursor: Cursor = None) -> Page[ProfileView]:
    """Who follows this user, most recent first."""
    return await _graph_page(db, user.id, user_id, "followers", limit, cursor)


@router.get("/{user_id}/following", response_model=Page[ProfileView])
async def following(user_id: str, user: CurrentUser, db: DatabaseDep, limit: Limit = 20,
                    cursor: Cursor = None) -> Page[ProfileView]:
    """Whom this user follows, most recent first."""
    return await _graph_page(db, user.id, user_id, "following", limit, cursor)
