"""What the OpenSearch engine sends: index definitions, documents and search requests.

Pure functions (no client, no I/O), so the mappings and the query translation are tested
without a server.

Analysis. Text reaches OpenSearch already normalized and cut into segments by
`analysis.segmented` (NFKC, case folding, words and CJK runs separated by spaces), so both
engines agree on characters and word boundaries. The analyzers then do what the embedded
engine does with its own tokens: the standard tokenizer splits CJK runs into characters
(Katakana and Hangul into words) with contiguous offsets, and `cjk_bigram` joins contiguous
CJK characters into overlapping bigrams. Indexing keeps the unigrams too
(`output_unigrams: true`): each bigram is then stacked on the position of its first
character, and every character is searchable on its own. Searching uses bigrams only
(a lone character stays a unigram), one position apart, so `match_phrase` over a CJK run's
bigrams needs them at consecutive character positions of one run: exactly a substring
test. A phrase never spans two CJK runs (see `query.Match`), which also keeps it clear of
the position shift that bigram-only streams get after a break in older Lucene versions
(apache/lucene#15812). `cjk_width` and `lowercase` repeat our normalization for text that
comes from elsewhere.

Deletion is a tombstone document, never a real delete: OpenSearch forgets a deleted
document's version after `index.gc_deletes`, after which a late, older write would
resurrect the post. Every query filters `deleted: false`.
"""

from datetime import UTC, datetime
from typing import Any

from chassis.text import normalize_tag

from . import MessageDoc, MessageScope, PostDoc, UserDoc, Viewer
from .analysis import segmented
from .query import Match, PostQuery, UserQuery
from .ranking import RECENCY_MAX_HALVINGS

TEXT = {"type": "text", "analyzer": "cjk_index", "search_analyzer": "cjk_search"}
KEYWORD = {"type": "keyword"}
DATE = {"type": "date", "format": "strict_date_optional_time||epoch_millis"}

# The recency factor of `ranking`, in milliseconds.
RECENCY_SCRIPT = (
    "Math.pow(0.5, Math.min(params.max_halvings, Math.max(0L, params.anchor - "
    "doc['created_at'].value.toInstant().toEpochMilli()) / params.half_life))"
)


def analysis_settings() -> dict[str, Any]:
    bigram_filters = {
        "cjk_bigram_index": {"type": "cjk_bigram", "output_unigrams": True},
        "cjk_bigram_search": {"type": "cjk_bigram", "output_unigrams": False},
    }
    analyzers = {
        name: {"type": "custom", "tokenizer": "standard",
               "filter": ["cjk_width", "lowercase", f"cjk_bigram_{kind}"]}
        for name, kind in (("cjk_index", "index"), ("cjk_search", "search"))
    }
    return {"filter": bigram_filters, "analyzer": analyzers}


def _index_body(refresh_interval: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": {"index": {"refresh_interval": refresh_interval},
                     "analysis": analysis_settings()},
        "mappings": {"dynamic": "strict", "properties": properties},
    }


def posts_index_body(refresh_interval: str = "250ms") -> dict[str, Any]:
    return _index_body(refresh_interval, {
        "post_id": KEYWORD, "author_id": KEYWORD, "author_username": KEYWORD,
        "text": TEXT, "hashtags": KEYWORD, "mentions": KEYWORD, "visibility": KEYWORD,
        "has_media": {"type": "boolean"}, "reply_to": KEYWORD,
        "created_at": DATE, "deleted": {"type": "boolean"},
    })


def users_index_body(refresh_interval: str = "250ms") -> dict[str, Any]:
    return _index_body(refresh_interval, {
        "user_id": KEYWORD, "username": KEYWORD, "display_name": TEXT, "bio": TEXT,
        "followers_count": {"type": "integer"},
    })


def messages_index_body(refresh_interval: str = "250ms") -> dict[str, Any]:
    return _index_body(refresh_interval, {
        "message_id": KEYWORD, "channel_id": KEYWORD, "sender_id": KEYWORD, "text": TEXT,
        "created_at": DATE, "deleted": {"type": "boolean"},
    })


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def post_source(doc: PostDoc) -> dict[str, Any]:
    text = f"{doc.content_warning}\n{doc.text}" if doc.content_warning else doc.text
    return {
        "post_id": doc.post_id, "author_id": doc.author_id,
        "author_username": doc.author_username.lower(), "text": segmented(text),
        "hashtags": list(dict.fromkeys(normalize_tag(t) for t in doc.hashtags)),
        "mentions": [m.lower() for m in doc.mentions],
        "visibility": doc.visibility, "has_media": doc.has_media, "reply_to": doc.reply_to,
        "created_at": _iso(doc.created_at), "deleted": False,
    }


def versioned(index: str, doc_id: str, body: dict[str, Any], version: int) -> dict[str, Any]:
    """Keyword arguments for `client.index`: the write wins only over a lower version."""
    return {"index": index, "id": doc_id, "body": body,
            "version": version, "version_type": "external"}


def post_request(index: str, doc: PostDoc) -> dict[str, Any]:
    return versioned(index, doc.post_id, post_source(doc), doc.version)


def tombstone_request(index: str, post_id: str, version: int) -> dict[str, Any]:
    return versioned(index, post_id, {"post_id": post_id, "deleted": True}, version)


def user_request(index: str, doc: UserDoc) -> dict[str, Any]:
    return versioned(index, doc.user_id, {
        "user_id": doc.user_id, "username": doc.username.lower(),
        "display_name": segmented(doc.display_name), "bio": segmented(doc.bio),
        "followers_count": doc.followers_count,
    }, doc.version)


def message_request(index: str, doc: MessageDoc) -> dict[str, Any]:
    """The message, or its tombstone once deleted, versioned by its change_seq."""
    if doc.deleted:
        return versioned(index, doc.message_id, {"message_id": doc.message_id, "deleted": True},
                         doc.version)
    return versioned(index, doc.message_id, {
        "message_id": doc.message_id, "channel_id": doc.channel_id, "sender_id": doc.sender_id,
        "text": segmented(doc.text), "created_at": _iso(doc.created_at), "deleted": False,
    }, doc.version)


def phrase(match: Match, field: str = "text") -> dict[str, Any]:
    exact = {"match_phrase": {field: {"query": match.text}}}
    if not match.stem:
        return exact
    return {"bool": {"should": [exact, {"match_phrase": {field: {"query": match.stem}}}],
                     "minimum_should_match": 1}}


def _all(matches: tuple[Match, ...]) -> dict[str, Any]:
    if len(matches) == 1:
        return phrase(matches[0])
    return {"bool": {"must": [phrase(m) for m in matches]}}


def visibility_filter(viewer: Viewer) -> dict[str, Any]:
    """Public posts, the viewer's own, followers-only posts of people they follow, and
    direct posts that mention them."""
    either: list[dict[str, Any]] = [
        {"term": {"visibility": "public"}},
        {"term": {"author_id": viewer.user_id}},
        {"bool": {"filter": [{"term": {"visibility": "direct"}},
                             {"term": {"mentions": viewer.username.lower()}}]}},
    ]
    if viewer.following:
        either.append({"bool": {"filter": [{"term": {"visibility": "followers"}},
                                           {"terms": {"author_id": sorted(viewer.following)}}]}})
    return {"bool": {"should": either, "minimum_should_match": 1}}


def _days(query: PostQuery) -> list[dict[str, Any]]:
    """The `since:`/`until:` range filter, if any."""
    if not (query.since or query.before):
        return []
    bounds = {"gte": _iso(query.since)} if query.since else {}
    if query.before:
        bounds["lt"] = _iso(query.before)
    return [{"range": {"created_at": bounds}}]


def post_search_body(query: PostQuery, viewer: Viewer, *, limit: int, anchor_ms: int,
                     half_life_ms: float, after: list[Any] | None) -> dict[str, Any]:
    """One page of posts: `limit` hits after the sort key `after` (None: the first page)."""
    filters: list[dict[str, Any]] = [{"term": {"deleted": False}}, visibility_filter(viewer)]
    filters += [{"term": {"hashtags": tag}} for tag in query.tags]
    if query.authors:
        filters.append({"terms": {"author_username": list(query.authors)}})
    filters += _days(query)
    if query.has_media:
        filters.append({"term": {"has_media": True}})
    must_not = [_all(group) for group in query.excluded]
    if viewer.excluded:
        must_not.append({"terms": {"author_id": sorted(viewer.excluded)}})
    body: dict[str, Any] = {
        "size": limit, "track_total_hits": False, "_source": False,
        "query": {"function_score": {
            "query": {"bool": {"must": [phrase(m) for m in query.required],
                               "filter": filters, "must_not": must_not}},
            "script_score": {"script": {"source": RECENCY_SCRIPT, "params": {
                "anchor": anchor_ms, "half_life": half_life_ms,
                "max_halvings": RECENCY_MAX_HALVINGS}}},
            "boost_mode": "multiply",
        }},
        "sort": [{"_score": "desc"}, {"created_at": "desc"}, {"post_id": "desc"}],
    }
    if after is not None:
        body["search_after"] = after
    return body


def user_search_body(query: UserQuery, viewer: Viewer, *, limit: int,
                     after: list[Any] | None) -> dict[str, Any]:
    """One page of users; the score is the tier of `ranking` (2, 1 or 0)."""
    terms = []
    for term in query.terms:
        either: list[dict[str, Any]] = []
        if term.matches:
            either.append({"bool": {"filter": [
                {"multi_match": {"query": m.text, "type": "phrase",
                                 "fields": ["display_name", "bio"]}} for m in term.matches]}})
        if term.username:
            either.append({"prefix": {"username": term.username}})
        terms.append({"bool": {"should": either, "minimum_should_match": 1}})
    boolean: dict[str, Any] = {"filter": terms}
    if viewer.excluded:
        boolean["must_not"] = [{"terms": {"user_id": sorted(viewer.excluded)}}]
    if words := list(query.usernames):
        boolean["should"] = [{"dis_max": {"queries": [
            {"constant_score": {"filter": {"terms": {"username": words}}, "boost": 2}},
            {"constant_score": {"filter": {"bool": {"should": [
                {"prefix": {"username": w}} for w in words]}}, "boost": 1}},
        ]}}]
    body: dict[str, Any] = {
        "size": limit, "track_total_hits": False, "_source": False,
        "query": {"bool": boolean},
        "sort": [{"_score": "desc"}, {"followers_count": "desc"}, {"username": "asc"},
                 {"user_id": "asc"}],
    }
    if after is not None:
        body["search_after"] = after
    return body


def message_search_body(query: PostQuery, scope: MessageScope, *, limit: int,
                        after: list[Any] | None) -> dict[str, Any]:
    """One page of messages in the scope's channels, newest first (no scoring)."""
    filters: list[dict[str, Any]] = [{"term": {"deleted": False}},
                                     {"terms": {"channel_id": sorted(scope.channel_ids)}}]
    if scope.sender_ids is not None:
        filters.append({"terms": {"sender_id": sorted(scope.sender_ids)}})
    filters += _days(query)
    body: dict[str, Any] = {
        "size": limit, "track_total_hits": False, "_source": False,
        "query": {"bool": {"must": [phrase(m) for m in query.required], "filter": filters,
                           "must_not": [_all(group) for group in query.excluded]}},
        "sort": [{"created_at": "desc"}, {"message_id": "desc"}],
    }
    if after is not None:
        body["search_after"] = after
    return body
