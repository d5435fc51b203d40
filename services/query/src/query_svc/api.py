"""The read API: post views, history and replies, timelines, and search."""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from chassis.auth import CurrentUser
from chassis.cache import ViewCache
from chassis.db import DatabaseDep
from chassis.pagination import Cursor, Limit, Page
from chassis.problems import invalid, not_found
from chassis.text import normalize_tag

from .messages import MessageView, search_messages
from .models import edges, post_mentions, post_tags, post_versions, posts, timeline, users
from .search import SearchEngine
from .views import (
    POST_VIEWS,
    VIEWER,
    VIEWER_NAME,
    Listing,
    PostView,
    UserView,
    page_of_posts,
    search_viewer,
    to_view,
    user_view,
    viewer_params,
    visible,
    visible_to_follower,
)

posts_router = APIRouter(prefix="/api/posts", tags=["posts (read)"])
timelines = APIRouter(prefix="/api/timelines", tags=["timelines"])
search_router = APIRouter(prefix="/api/search", tags=["search"])
PostId = Annotated[str, Path(max_length=64)]
DEFAULT_LIMIT = 20

ONE_POST = POST_VIEWS.where(posts.c.id == bindparam("post"), visible(hide_muted=False))
REPLIES = [Listing.of(POST_VIEWS.where(posts.c.reply_to == bindparam("post"), visible()),
                      oldest_first=True)]
HOME = [
    Listing.of(POST_VIEWS.join(timeline, timeline.c.post_id == posts.c.id)
               .where(timeline.c.user_id == VIEWER, visible()), timeline.c.post_id),
    Listing.of(POST_VIEWS.join(edges, edges.c.target == posts.c.author_id)
               .where(edges.c.kind == "follow", edges.c.source == VIEWER, edges.c.active,
                      posts.c.fanned_out.is_(False), visible_to_follower())),
    Listing.of(POST_VIEWS.join(post_mentions, post_mentions.c.post_id == posts.c.id)
               .where(post_mentions.c.username == VIEWER_NAME, posts.c.visibility == "direct",
                      visible()), post_mentions.c.post_id),
]
USER_POSTS = [Listing.of(POST_VIEWS.where(posts.c.author_id == bindparam("author"),
                                          visible(hide_muted=False)))]
TAGGED = [Listing.of(POST_VIEWS.join(post_tags, post_tags.c.post_id == posts.c.id)
                     .where(post_tags.c.tag == bindparam("tag"), visible()),
                     post_tags.c.post_id)]
PUBLIC = [Listing.of(POST_VIEWS.where(posts.c.visibility == "public", visible()))]
FOUND = POST_VIEWS.where(posts.c.id.in_(bindparam("ids", expanding=True)), visible())


class Version(BaseModel):
    version: int
    text: str
    content_warning: str | None
    created_at: datetime


async def _visible_post(session: AsyncSession, user: CurrentUser, post_id: str) -> PostView:
    row = (await session.execute(ONE_POST, {**viewer_params(user), "post": post_id})).first()
    if row is None:
        raise not_found("post")
    return to_view(row)


@posts_router.get("/{post_id}")
async def get_post(post_id: PostId, user: CurrentUser, db: DatabaseDep) -> PostView:
    """A post as the caller sees it; 404 also when the caller may not see it."""
    async with db.sessions() as session:
        return await _visible_post(session, user, post_id)


@posts_router.get("/{post_id}/history")
async def history(post_id: PostId, user: CurrentUser, db: DatabaseDep) -> Page[Version]:
    """Every version of a post, newest first (the first item is the current text)."""
    async with db.sessions() as session:
        await _visible_post(session, user, post_id)
        rows = (await session.execute(select(post_versions).where(
            post_versions.c.post_id == post_id).order_by(post_versions.c.version.desc()))).all()
    return Page(items=[Version(version=r.version, text=r.text, content_warning=r.content_warning,
                               created_at=r.created_at) for r in rows], next_cursor=None)


@posts_router.get("/{post_id}/replies")
async def replies(post_id: PostId, user: CurrentUser, db: DatabaseDep, limit: Limit = 20,
                  cursor: Cursor = None) -> Page[PostView]:
    """Direct replies to a post, oldest first (a thread reads top-down)."""
    async with db.sessions() as session:
        await _visible_post(session, user, post_id)
        return await page_of_posts(session, REPLIES, user, limit=limit, cursor=cursor,
                                   post=post_id)


@timelines.get("/home", response_model=Page[PostView])
async def home(request: Request, user: CurrentUser, db: DatabaseDep, limit: Limit = 20,
               cursor: Cursor = None) -> Response:
    """Posts by the people the caller follows and the caller's own, newest first.

    Most posts were fanned out into the caller's timeline when written. Posts by authors
    with very many followers were not, and are merged in here from the follow list, as are
    direct posts that mention the caller.
    """

    async def load() -> bytes:
        async with db.sessions() as session:
            page = await page_of_posts(session, HOME, user, limit=limit, cursor=cursor)
        return page.model_dump_json().encode()

    # The first page is what clients poll: it is cached until the reader's timeline changes.
    cache: ViewCache | None = getattr(request.app.state, "home_cache", None)
    if cursor is None and limit == DEFAULT_LIMIT and cache is not None:
        body = await cache.get_or_load(user.id, load)
    else:
        body = await load()
    return Response(body, media_type="application/json")


@timelines.get("/users/{user_id}")
async def user_timeline(user_id: Annotated[str, Path(max_length=64)], user: CurrentUser,
                        db: DatabaseDep, limit: Limit = 20,
                        cursor: Cursor = None) -> Page[PostView]:
    """One user's posts that the caller may see, newest first."""
    async with db.sessions() as session:
        return await page_of_posts(session, USER_POSTS, user, limit=limit, cursor=cursor,
                                   author=user_id)


@timelines.get("/tags/{tag}")
async def tag_timeline(tag: Annotated[str, Path(max_length=100)], user: CurrentUser,
                       db: DatabaseDep, limit: Limit = 20,
                       cursor: Cursor = None) -> Page[PostView]:
    """Posts carrying a hashtag (`ラーメン`, `#ラーメン` and `#ＲＡＭＥＮ`-style spellings
    are one tag), newest first."""
    name = normalize_tag(tag)
    if not name:
        raise invalid("tag", "must not be empty")
    async with db.sessions() as session:
        return await page_of_posts(session, TAGGED, user, limit=limit, cursor=cursor, tag=name)


@timelines.get("/public")
async def public_timeline(user: CurrentUser, db: DatabaseDep, limit: Limit = 20,
                          cursor: Cursor = None) -> Page[PostView]:
    """Every public post, newest first."""
    async with db.sessions() as session:
        return await page_of_posts(session, PUBLIC, user, limit=limit, cursor=cursor)


async def _search(request: Request) -> SearchEngine:
    return request.app.state.search


SearchDep = Annotated[SearchEngine, Depends(_search)]
SearchType = Literal["posts", "users", "messages"]


@search_router.get("")
async def search(user: CurrentUser, db: DatabaseDep, engine: SearchDep,
                 q: Annotated[str, Query(max_length=500)], type: SearchType = "posts",
                 channel_id: Annotated[str | None, Query(max_length=64)] = None,
                 limit: Limit = 20, cursor: Cursor = None,
                 ) -> Page[PostView] | Page[UserView] | Page[MessageView]:
    """Search posts (with the operators `from:`, `#tag`, `"phrase"`, `-word`, `since:`,
    `until:`, `has:media`; relevance first, recent posts boosted), users, or chat messages
    in the caller's channels (`channel_id=` for one of them; newest first)."""
    if channel_id is not None and type != "messages":
        raise invalid("channel_id", "only a search of type=messages takes a channel")
    async with db.sessions() as session:
        if type == "messages":
            return await search_messages(session, engine, user, q, channel_id=channel_id,
                                         limit=limit, cursor=cursor)
        viewer = await search_viewer(session, user)
        if type == "users":
            hits = await engine.search_users(q, viewer, limit=limit, cursor=cursor)
            rows = (await session.execute(select(users).where(
                users.c.user_id.in_(hits.ids)))).all()
            by_id = {row.user_id: user_view(row) for row in rows}
            return Page[UserView](items=[by_id[i] for i in hits.ids if i in by_id],
                                  next_cursor=hits.next_cursor)
        hits = await engine.search_posts(q, viewer, limit=limit, cursor=cursor)
        rows = (await session.execute(FOUND, {**viewer_params(user), "ids": hits.ids})).all()
    by_id = {row.id: to_view(row) for row in rows}
    return Page[PostView](items=[by_id[i] for i in hits.ids if i in by_id],
                          next_cursor=hits.next_cursor)


ROUTERS = [posts_router, timelines, search_router]
