"""SQL for the embedded engine: FTS5 match expressions and the ranked, filtered selects.

Pure functions from a parsed query to SQL text and parameters, so the shape of the SQL can
be read (and tested) without a database. Every filter sits in the WHERE clause of the one
statement that also holds the LIMIT, so a page is only short when results run out.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from . import MessageScope, Viewer
from .analysis import bigrams
from .query import Match, PostQuery, UserQuery
from .ranking import RECENCY_MAX_HALVINGS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEY_BITS = 10  # row keys per millisecond of creation time
SCHEMA_VERSION = 2  # PRAGMA user_version of an index this code can read

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS posts (
    id INTEGER PRIMARY KEY,            -- row key (see post_key), also the post's post_text rowid
    post_id TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,          -- 1: a tombstone that only keeps the version
    author_id TEXT,
    visibility TEXT,
    mentions TEXT,                     -- JSON array of lowercase usernames
    has_media INTEGER,
    created_us INTEGER                 -- microseconds since the Unix epoch, UTC
);
CREATE INDEX IF NOT EXISTS posts_by_time ON posts (created_us, post_id) WHERE deleted = 0;
CREATE VIRTUAL TABLE IF NOT EXISTS post_text
    USING fts5(body, tags, author, tokenize = "ascii tokenchars '_'");
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,            -- rowid of the user's row in user_text
    user_id TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL,
    username TEXT NOT NULL,            -- lowercase
    followers_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counts (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counts VALUES ('live_posts', 0), ('inserted', 0), ('deleted', 0),
    ('epoch', abs(random()));                 -- a new index, so counts cached before are void
CREATE VIRTUAL TABLE IF NOT EXISTS user_text
    USING fts5(username, display_name, bio, tokenize = "ascii tokenchars '_'");
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,            -- row key (see post_key), also the message_text rowid
    message_id TEXT NOT NULL UNIQUE,
    version INTEGER NOT NULL,          -- the message's change_seq
    deleted INTEGER NOT NULL,          -- 1: a tombstone without text
    channel_id TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    created_us INTEGER NOT NULL
);
-- The channel is a column too, so that FTS5 intersects the words with the caller's channels.
CREATE VIRTUAL TABLE IF NOT EXISTS message_text
    USING fts5(body, channel, tokenize = "ascii tokenchars '_'");
PRAGMA user_version = {SCHEMA_VERSION};
"""

DROP = """
DROP TABLE IF EXISTS posts;
DROP TABLE IF EXISTS post_text;
DROP TABLE IF EXISTS users;
DROP TABLE IF EXISTS user_text;
DROP TABLE IF EXISTS counts;
DROP TABLE IF EXISTS messages;
DROP TABLE IF EXISTS message_text;
"""


@lru_cache(maxsize=4096)
def id_list(ids: frozenset[str]) -> str:
    """A set of ids as the JSON array `json_each` reads (a viewer's sets repeat request after
    request, so the encoding is kept)."""
    return json.dumps(sorted(ids))


def _quoted(tokens: str) -> str:
    """An FTS5 string: our tokens never hold quotes, but doubling keeps that a non-issue."""
    return '"' + tokens.replace('"', '""') + '"'


def phrase(match: Match) -> str:
    """The FTS5 expression for one match, over the pre-tokenized text (see `analysis`)."""
    if not match.cjk:
        return _quoted(match.text)
    if len(match.text) == 1:
        return _quoted(match.text) + " *"
    exact = _quoted(" ".join(bigrams(match.text)))
    if match.stem:
        return f"({exact} OR {_quoted(' '.join(bigrams(match.stem)))})"
    return exact


def _phrases(match: Match) -> list[str]:
    """The FTS5 phrases of one match, each of which BM25 weighs on its own."""
    if match.cjk and match.stem:
        return [_quoted(" ".join(bigrams(run))) for run in (match.text, match.stem)]
    return [phrase(match)]


def _all(matches: tuple[Match, ...]) -> str:
    return "(" + " AND ".join(phrase(m) for m in matches) + ")"


def post_match(query: PostQuery) -> str | None:
    """What FTS5 must find: the words, tags and authors; None when the query has none."""
    parts = [f"body : {phrase(m)}" for m in query.required]
    parts += [f"tags : {_quoted(tag)}" for tag in query.tags]
    if query.authors:
        parts.append("author : (" + " OR ".join(_quoted(a) for a in query.authors) + ")")
    return " AND ".join(parts) or None


def excluded_match(query: PostQuery) -> str | None:
    groups = [f"body : {_all(group)}" for group in query.excluded]
    return " OR ".join(groups) or None


_VISIBLE = """
    p.deleted = 0
    AND p.author_id NOT IN (SELECT value FROM json_each(:excluded))
    AND (p.visibility = 'public'
         OR p.author_id = :me
         OR (p.visibility = 'followers'
             AND p.author_id IN (SELECT value FROM json_each(:following)))
         OR (p.visibility = 'direct'
             AND EXISTS (SELECT 1 FROM json_each(p.mentions) WHERE value = :my_username)))
"""


@dataclass(frozen=True)
class PostPlan:
    """How to find one page of posts.

    `windowed`: `sql` ranks the matches whose row keys lie in [:lo, :hi) and returns the best
    :limit as (post_id, score, created_us), for the walk over time windows in `walk`;
    `phrases` are the positive body phrases whose BM25 weights bound the score, `match`
    the FTS5 expression (its count sizes the windows). Otherwise `sql` is the page itself.
    """

    sql: str
    params: dict[str, Any]
    windowed: bool
    phrases: tuple[str, ...] = ()
    match: str = ""
    since_key: int | None = None


def post_key(created_us: int) -> int:
    """The first row key for a post created at `created_us`: keys are ordered like creation
    times (one 1024-key bucket per millisecond), so FTS5 can walk matches newest first."""
    return (created_us // 1000) << KEY_BITS


def post_plan(query: PostQuery, viewer: Viewer, *, anchor_us: int, half_life_us: float,
              after: list[Any] | None, limit: int) -> PostPlan:
    """The statement for one page of posts, after the sort key `after` (a cursor's)."""
    params: dict[str, Any] = {
        "excluded": id_list(viewer.excluded), "following": id_list(viewer.following),
        "me": viewer.user_id, "my_username": viewer.username.lower(), "limit": limit,
    }
    where = [_VISIBLE]
    if query.since:
        where.append("p.created_us >= :since")
        params["since"] = micros(query.since)
    if query.before:
        where.append("p.created_us < :before")
        params["before"] = micros(query.before)
    if query.has_media:
        where.append("p.has_media = 1")
    match, excluded = post_match(query), excluded_match(query)
    if match and excluded:
        match = f"({match}) NOT ({excluded})"
    elif excluded:
        where.append("p.id NOT IN (SELECT rowid FROM post_text WHERE post_text MATCH :not)")
        params["not"] = excluded
    if after is not None:
        params.update(s=after[0], c=after[1], id=after[2])
    filters = " AND ".join(where)
    if match is None:
        keyset = "AND (p.created_us, p.post_id) < (:c, :id)" if after is not None else ""
        return PostPlan(f"""
            SELECT p.post_id, 0.0, p.created_us FROM posts p
            WHERE {filters} {keyset}
            ORDER BY p.created_us DESC, p.post_id DESC LIMIT :limit""", params, windowed=False)
    params.update(match=match, anchor=anchor_us, half_life=half_life_us,
                  max_halvings=RECENCY_MAX_HALVINGS)
    keyset = "WHERE score < :s OR (score = :s AND (created_us, post_id) < (:c, :id))"
    return PostPlan(f"""
        SELECT post_id, score, created_us FROM (
            SELECT p.post_id AS post_id, p.created_us AS created_us,
                   -bm25(post_text, 1.0, 0.0, 0.0) * pow(0.5, min(:max_halvings,
                       max(0, :anchor - p.created_us) / :half_life)) AS score
            FROM post_text JOIN posts p ON p.id = post_text.rowid
            WHERE post_text MATCH :match AND post_text.rowid >= :lo AND post_text.rowid < :hi
              AND {filters})
        {keyset if after is not None else ""}
        ORDER BY score DESC, created_us DESC, post_id DESC LIMIT :limit""", params,
        windowed=True, match=match,
        phrases=tuple(f"body : {p}" for m in query.required for p in _phrases(m)),
        since_key=post_key(params["since"]) if query.since else None)


def user_match(query: UserQuery) -> str:
    terms = []
    for term in query.terms:
        either = []
        if term.matches:
            either.append("{display_name bio} : " + _all(term.matches))
        if term.username:
            either.append(f"username : {_quoted(term.username)} *")
        terms.append("(" + " OR ".join(either) + ")")
    return " AND ".join(terms)


def user_select(query: UserQuery, viewer: Viewer, *, after: list[Any] | None,
                limit: int) -> tuple[str, dict[str, Any]]:
    """One page of user ids: tier, then followers, then username (see `ranking`)."""
    params: dict[str, Any] = {
        "match": user_match(query), "words": json.dumps(query.usernames),
        "excluded": id_list(viewer.excluded), "limit": limit,
    }
    keyset = ""
    if after is not None:
        params.update(t=after[0], f=after[1], u=after[2], id=after[3])
        keyset = """WHERE tier < :t OR (tier = :t AND (followers_count < :f
                       OR (followers_count = :f AND (username, user_id) > (:u, :id))))"""
    return (f"""
        SELECT user_id, tier, followers_count, username FROM (
            SELECT u.user_id AS user_id, u.followers_count AS followers_count,
                   u.username AS username,
                   CASE WHEN u.username IN (SELECT value FROM json_each(:words)) THEN 2
                        WHEN EXISTS (SELECT 1 FROM json_each(:words)
                                     WHERE substr(u.username, 1, length(value)) = value) THEN 1
                        ELSE 0 END AS tier
            FROM user_text JOIN users u ON u.id = user_text.rowid
            WHERE user_text MATCH :match
              AND u.user_id NOT IN (SELECT value FROM json_each(:excluded)))
        {keyset}
        ORDER BY tier DESC, followers_count DESC, username, user_id LIMIT :limit""", params)


def message_select(query: PostQuery, scope: MessageScope, *, after: int | None,
                   limit: int) -> tuple[str, dict[str, Any]]:
    """One page of (message_id, row key), newest first, after the row key `after`.

    FTS5 walks its matches in descending row key order (keys follow creation time) and the
    LIMIT stops it after the page. The channel column narrows the match to the scope's
    channels; the join checks them exactly (an id that the tokenizer splits in two could
    otherwise match as a phrase inside a longer one).
    """
    parts = [f"body : {phrase(m)}" for m in query.required]
    parts.append("channel : (" + " OR ".join(_quoted(c) for c in sorted(scope.channel_ids))
                 + ")")
    match = " AND ".join(parts)
    if excluded := excluded_match(query):
        match = f"({match}) NOT ({excluded})"
    params: dict[str, Any] = {"match": match, "channels": id_list(scope.channel_ids),
                              "limit": limit}
    where = ["message_text MATCH :match", "m.deleted = 0",
             "m.channel_id IN (SELECT value FROM json_each(:channels))"]
    if scope.sender_ids is not None:
        where.append("m.sender_id IN (SELECT value FROM json_each(:senders))")
        params["senders"] = id_list(scope.sender_ids)
    if query.since:  # no key is earlier than its creation time: FTS5 stops at since_key
        where += ["m.created_us >= :since", "message_text.rowid >= :since_key"]
        params.update(since=micros(query.since), since_key=post_key(micros(query.since)))
    if query.before:
        where.append("m.created_us < :before")
        params["before"] = micros(query.before)
    if after is not None:
        where.append("message_text.rowid < :after")
        params["after"] = after
    return (f"""
        SELECT m.message_id, m.id FROM message_text JOIN messages m ON m.id = message_text.rowid
        WHERE {" AND ".join(where)}
        ORDER BY message_text.rowid DESC LIMIT :limit""", params)


def micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch, exact (no float rounding); naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)
