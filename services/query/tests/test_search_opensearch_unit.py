"""The OpenSearch engine without a server: index definitions, documents, query translation,
and the engine's calls against a stand-in client."""

from datetime import UTC, datetime
from typing import Any

import pytest
from opensearchpy.exceptions import ConflictError, TransportError

from query_svc.search import MessageDoc, MessageScope, PostDoc, UserDoc, Viewer
from query_svc.search.embedded import EmbeddedSearch
from query_svc.search.factory import engine_from_url
from query_svc.search.opensearch import OpenSearchEngine
from query_svc.search.opensearch_bodies import (
    RECENCY_SCRIPT,
    message_request,
    message_search_body,
    messages_index_body,
    post_request,
    post_search_body,
    posts_index_body,
    tombstone_request,
    user_search_body,
    users_index_body,
    visibility_filter,
)
from query_svc.search.query import parse_message_query, parse_post_query, parse_user_query

AT = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
VIEWER = Viewer("id-me", "Me", following=frozenset({"id-b", "id-a"}),
                excluded=frozenset({"id-troll"}))


def doc(**fields: Any) -> PostDoc:
    values: dict[str, Any] = {
        "post_id": "p1", "author_id": "id-a", "author_username": "Alice",
        "text": "Ｒａｍｅｎ！今日の🍜ラーメン", "content_warning": None,
        "hashtags": ("ラーメン",), "mentions": ("Bob",), "visibility": "public",
        "has_media": True, "reply_to": None, "created_at": AT, "version": 7,
    }
    return PostDoc(**(values | fields))


def body_for(q: str, viewer: Viewer = VIEWER, after: list[Any] | None = None) -> dict[str, Any]:
    return post_search_body(parse_post_query(q), viewer, limit=11, anchor_ms=1_000,
                            half_life_ms=604_800_000.0, after=after)


# --- index definitions -----------------------------------------------------------------------

def test_index_analyzer_adds_unigrams_and_search_analyzer_uses_bigrams_only():
    analysis = posts_index_body()["settings"]["analysis"]
    index, search = analysis["analyzer"]["cjk_index"], analysis["analyzer"]["cjk_search"]
    assert index["tokenizer"] == search["tokenizer"] == "standard"
    assert index["filter"] == ["cjk_width", "lowercase", "cjk_bigram_index"]
    assert search["filter"] == ["cjk_width", "lowercase", "cjk_bigram_search"]
    assert analysis["filter"]["cjk_bigram_index"] == {"type": "cjk_bigram", "output_unigrams": True}
    assert analysis["filter"]["cjk_bigram_search"] == {"type": "cjk_bigram",
                                                       "output_unigrams": False}


def test_text_is_analyzed_and_ids_and_filters_are_keywords():
    posts = posts_index_body()["mappings"]
    assert posts["dynamic"] == "strict"
    assert posts["properties"]["text"] == {"type": "text", "analyzer": "cjk_index",
                                           "search_analyzer": "cjk_search"}
    for name in ("post_id", "author_id", "author_username", "visibility", "hashtags",
                 "mentions"):
        assert posts["properties"][name] == {"type": "keyword"}
    assert posts["properties"]["deleted"] == {"type": "boolean"}
    users = users_index_body()["mappings"]["properties"]
    assert users["username"] == users["user_id"] == {"type": "keyword"}
    assert users["display_name"]["analyzer"] == users["bio"]["analyzer"] == "cjk_index"


def test_refresh_interval_is_explicit_and_configurable():
    assert posts_index_body()["settings"]["index"]["refresh_interval"] == "250ms"
    assert users_index_body("1s")["settings"]["index"]["refresh_interval"] == "1s"


# --- documents -------------------------------------------------------------------------------

def test_posts_are_indexed_by_id_with_their_external_version():
    request = post_request("x-posts", doc())
    assert {k: request[k] for k in ("index", "id", "version", "version_type")} == {
        "index": "x-posts", "id": "p1", "version": 7, "version_type": "external"}
    source = request["body"]
    assert source["text"] == "ramen 今日の ラーメン"  # normalized, emoji dropped, segmented
    assert source["author_username"] == "alice" and source["mentions"] == ["bob"]
    assert source["hashtags"] == ["ラーメン"]
    assert source["created_at"] == "2024-03-01T12:30:00.000+00:00"
    assert source["deleted"] is False


def test_delete_is_a_tombstone_document_with_the_delete_version():
    assert tombstone_request("x-posts", "p1", 9) == {
        "index": "x-posts", "id": "p1", "body": {"post_id": "p1", "deleted": True},
        "version": 9, "version_type": "external"}


# --- query translation -----------------------------------------------------------------------

def test_visibility_filter_allows_public_own_followed_and_mentioned_direct():
    should = visibility_filter(VIEWER)["bool"]["should"]
    assert visibility_filter(VIEWER)["bool"]["minimum_should_match"] == 1
    assert {"term": {"visibility": "public"}} in should
    assert {"term": {"author_id": "id-me"}} in should
    assert {"bool": {"filter": [{"term": {"visibility": "followers"}},
                                {"terms": {"author_id": ["id-a", "id-b"]}}]}} in should
    assert {"bool": {"filter": [{"term": {"visibility": "direct"}},
                                {"term": {"mentions": "me"}}]}} in should
    assert len(visibility_filter(Viewer("id-me", "me"))["bool"]["should"]) == 3


def test_excluded_authors_and_tombstones_are_filtered_out():
    boolean = body_for("hello")["query"]["function_score"]["query"]["bool"]
    assert {"term": {"deleted": False}} in boolean["filter"]
    assert visibility_filter(VIEWER) in boolean["filter"]
    assert {"terms": {"author_id": ["id-troll"]}} in boolean["must_not"]


def test_words_phrases_and_cjk_become_phrase_queries_with_a_stem_alternative():
    boolean = body_for('美味しい "New York" e-mail')["query"]["function_score"]["query"]["bool"]
    must = boolean["must"]
    assert must == [
        {"bool": {"should": [{"match_phrase": {"text": {"query": "美味しい"}}},
                             {"match_phrase": {"text": {"query": "美味し"}}}],
                  "minimum_should_match": 1}},
        {"match_phrase": {"text": {"query": "new york"}}},
        {"match_phrase": {"text": {"query": "e mail"}}},
    ]


def test_operators_become_filters_and_exclusions_must_not():
    q = 'ramen #ラーメン from:alice from:bob since:2024-01-02 until:2024-01-03 has:media ' \
        '-spicy -"very hot"'
    boolean = body_for(q)["query"]["function_score"]["query"]["bool"]
    assert {"term": {"hashtags": "ラーメン"}} in boolean["filter"]
    assert {"terms": {"author_username": ["alice", "bob"]}} in boolean["filter"]
    assert {"range": {"created_at": {"gte": "2024-01-02T00:00:00.000+00:00",
                                     "lt": "2024-01-04T00:00:00.000+00:00"}}} in boolean["filter"]
    assert {"term": {"has_media": True}} in boolean["filter"]
    assert {"match_phrase": {"text": {"query": "spicy"}}} in boolean["must_not"]
    assert {"match_phrase": {"text": {"query": "very hot"}}} in boolean["must_not"]


def test_ranking_multiplies_relevance_by_recency_and_sorts_for_search_after():
    body = body_for("hello", after=[1.5, 99, "p9"])
    score = body["query"]["function_score"]
    assert score["boost_mode"] == "multiply"
    assert score["script_score"]["script"]["source"] == RECENCY_SCRIPT
    assert score["script_score"]["script"]["params"]["anchor"] == 1_000
    assert body["sort"] == [{"_score": "desc"}, {"created_at": "desc"}, {"post_id": "desc"}]
    assert body["search_after"] == [1.5, 99, "p9"]
    assert body["size"] == 11 and body["_source"] is False
    assert "search_after" not in body_for("hello")


def test_user_search_scores_the_username_tier_and_filters_terms():
    body = user_search_body(parse_user_query("@Tana 田中"), VIEWER, limit=5, after=None)
    boolean = body["query"]["bool"]
    assert boolean["must_not"] == [{"terms": {"user_id": ["id-troll"]}}]
    first, second = boolean["filter"]
    assert {"prefix": {"username": "tana"}} in first["bool"]["should"]
    assert second["bool"]["should"] == [{"bool": {"filter": [{"multi_match": {
        "query": "田中", "type": "phrase", "fields": ["display_name", "bio"]}}]}}]
    tiers = boolean["should"][0]["dis_max"]["queries"]
    assert tiers[0] == {"constant_score": {"filter": {"terms": {"username": ["tana"]}},
                                           "boost": 2}}
    assert tiers[1]["constant_score"]["boost"] == 1
    assert body["sort"][0] == {"_score": "desc"} and body["sort"][1] == {
        "followers_count": "desc"}


# --- messages --------------------------------------------------------------------------------

SCOPE = MessageScope(frozenset({"c2", "c1"}))


def message(**fields: Any) -> MessageDoc:
    values: dict[str, Any] = {"message_id": "m1", "channel_id": "c1", "sender_id": "id-a",
                              "text": "今日のﾗｰﾒﾝ！Ｏｋ", "created_at": AT, "version": 4}
    return MessageDoc(**(values | fields))


def message_body(q: str, scope: MessageScope = SCOPE,
                 after: list[Any] | None = None) -> dict[str, Any]:
    return message_search_body(parse_message_query(q), scope, limit=11, after=after)


def test_messages_index_analyzes_text_like_posts_and_keeps_ids_as_keywords():
    body = messages_index_body("1s")
    assert body["settings"]["analysis"] == posts_index_body()["settings"]["analysis"]
    assert body["settings"]["index"]["refresh_interval"] == "1s"
    mapping = body["mappings"]
    assert mapping["dynamic"] == "strict"
    assert mapping["properties"]["text"] == posts_index_body()["mappings"]["properties"]["text"]
    for name in ("message_id", "channel_id", "sender_id"):
        assert mapping["properties"][name] == {"type": "keyword"}
    assert mapping["properties"]["created_at"]["type"] == "date"
    assert mapping["properties"]["deleted"] == {"type": "boolean"}


def test_messages_are_indexed_by_id_with_their_change_seq_as_external_version():
    request = message_request("x-messages", message())
    assert {k: request[k] for k in ("index", "id", "version", "version_type")} == {
        "index": "x-messages", "id": "m1", "version": 4, "version_type": "external"}
    assert request["body"] == {
        "message_id": "m1", "channel_id": "c1", "sender_id": "id-a", "text": "今日のラーメン ok",
        "created_at": "2024-03-01T12:30:00.000+00:00", "deleted": False}


def test_a_deleted_message_is_a_tombstone_with_its_version():
    assert message_request("x-messages", message(text="", deleted=True, version=6)) == {
        "index": "x-messages", "id": "m1", "body": {"message_id": "m1", "deleted": True},
        "version": 6, "version_type": "external"}


def test_message_search_filters_by_channels_senders_days_and_tombstones():
    scope = MessageScope(frozenset({"c1"}), sender_ids=frozenset({"id-b", "id-a"}))
    boolean = message_body('ラーメン "new york" -spicy #ramen since:2024-01-02', scope)[
        "query"]["bool"]
    assert boolean["filter"] == [
        {"term": {"deleted": False}}, {"terms": {"channel_id": ["c1"]}},
        {"terms": {"sender_id": ["id-a", "id-b"]}},
        {"range": {"created_at": {"gte": "2024-01-02T00:00:00.000+00:00"}}}]
    assert boolean["must"] == [{"match_phrase": {"text": {"query": "ラーメン"}}},
                               {"match_phrase": {"text": {"query": "new york"}}},
                               {"match_phrase": {"text": {"query": "ramen"}}}]
    assert boolean["must_not"] == [{"match_phrase": {"text": {"query": "spicy"}}}]
    anyone = message_body("hello")["query"]["bool"]["filter"]
    assert anyone[:2] == [{"term": {"deleted": False}}, {"terms": {"channel_id": ["c1", "c2"]}}]
    assert len(anyone) == 2


def test_message_search_is_newest_first_without_scores_and_pages_with_search_after():
    body = message_body("hello", after=[1_700_000_000_000, "m9"])
    assert body["sort"] == [{"created_at": "desc"}, {"message_id": "desc"}]
    assert body["search_after"] == [1_700_000_000_000, "m9"]
    assert body["size"] == 11 and body["_source"] is False and body["track_total_hits"] is False
    assert "function_score" not in body["query"]
    assert "search_after" not in message_body("hello")


# --- the engine against a stand-in client -------------------------------------------------

class FakeIndices:
    def __init__(self) -> None:
        self.existing: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    async def exists(self, *, index: str) -> bool:
        return index in self.existing

    async def create(self, *, index: str, body: dict[str, Any]) -> None:
        self.calls.append(("create", index))
        self.existing.add(index)

    async def delete(self, *, index: str, **params: Any) -> None:
        self.calls.append(("delete", index))
        self.existing.discard(index)

    async def refresh(self, *, index: str) -> None:
        self.calls.append(("refresh", index))


class FakeClient:
    def __init__(self) -> None:
        self.indices = FakeIndices()
        self.indexed: list[dict[str, Any]] = []
        self.searched: list[dict[str, Any]] = []
        self.pages: list[list[dict[str, Any]]] = []
        self.error: Exception | None = None

    async def index(self, **request: Any) -> None:
        self.indexed.append(request)
        if self.error:
            raise self.error

    async def search(self, *, index: str, body: dict[str, Any]) -> dict[str, Any]:
        self.searched.append(body)
        return {"hits": {"hits": self.pages.pop(0)}}

    async def close(self) -> None:
        pass


@pytest.fixture
async def fake() -> tuple[OpenSearchEngine, FakeClient]:
    client = FakeClient()
    engine = OpenSearchEngine("http://unused:9200", prefix="t-", client=client)
    client.indices.existing.add("t-users")
    await engine.start()
    return engine, client


async def test_start_creates_only_missing_indexes_and_reset_recreates_every_one(fake):
    engine, client = fake
    assert client.indices.calls == [("create", "t-posts"), ("create", "t-messages")]
    await engine.reset()
    assert client.indices.calls[2:] == [("delete", "t-posts"), ("create", "t-posts"),
                                        ("delete", "t-users"), ("create", "t-users"),
                                        ("delete", "t-messages"), ("create", "t-messages")]
    await engine.refresh()
    assert client.indices.calls[-1] == ("refresh", "t-posts,t-users,t-messages")


async def test_a_version_conflict_is_a_no_op_and_other_errors_are_not(fake):
    engine, client = fake
    client.error = ConflictError(409, "version_conflict_engine_exception", {})
    await engine.index_post(doc())
    await engine.delete_post("p1", 3)
    client.error = TransportError(500, "boom", {})
    with pytest.raises(TransportError):
        await engine.index_user(UserDoc("u1", "a", "A", "", 0, 1))
    assert [r["body"].get("deleted") for r in client.indexed[:2]] == [False, True]
    assert all(r["version_type"] == "external" for r in client.indexed)


async def test_search_after_cursor_round_trip(fake):
    engine, client = fake
    client.pages = [[{"_id": f"p{i}", "sort": [2.5 - i, 1000 - i, f"p{i}"]} for i in range(3)],
                    [{"_id": "p2", "sort": [0.5, 998, "p2"]}]]
    first = await engine.search_posts("ramen", VIEWER, limit=2, cursor=None)
    assert first.ids == ["p0", "p1"] and first.next_cursor
    second = await engine.search_posts("ramen", VIEWER, limit=2, cursor=first.next_cursor)
    assert second.ids == ["p2"] and second.next_cursor is None
    sent_first, sent_second = client.searched
    assert sent_first["size"] == 3 and "search_after" not in sent_first
    assert sent_second["search_after"] == [1.5, 999, "p1"]
    anchors = [b["query"]["function_score"]["script_score"]["script"]["params"]["anchor"]
               for b in client.searched]
    assert anchors[0] == anchors[1]  # every page scores recency from the same moment


async def test_message_search_pages_and_skips_the_server_for_an_empty_scope(fake):
    engine, client = fake
    client.pages = [[{"_id": f"m{i}", "sort": [1000 - i, f"m{i}"]} for i in range(3)],
                    [{"_id": "m2", "sort": [998, "m2"]}]]
    first = await engine.search_messages("ramen", SCOPE, limit=2, cursor=None)
    assert first.ids == ["m0", "m1"] and first.next_cursor
    second = await engine.search_messages("ramen", SCOPE, limit=2, cursor=first.next_cursor)
    assert second.ids == ["m2"] and second.next_cursor is None
    assert client.searched[1]["search_after"] == [999, "m1"]
    for scope in (MessageScope(frozenset()), MessageScope(frozenset({"c1"}), frozenset())):
        assert (await engine.search_messages("ramen", scope, limit=2, cursor=None)).ids == []
    assert len(client.searched) == 2


async def test_message_writes_are_versioned_and_a_conflict_is_a_no_op(fake):
    engine, client = fake
    client.error = ConflictError(409, "version_conflict_engine_exception", {})
    await engine.index_message(message())
    assert client.indexed[-1]["index"] == "t-messages"
    assert client.indexed[-1]["version_type"] == "external"


def test_engine_from_url_picks_the_engine(tmp_path):
    assert isinstance(engine_from_url(f"sqlite:///{tmp_path}/s.db"), EmbeddedSearch)
    remote = engine_from_url("https://search.internal:9200", prefix="p-")
    assert isinstance(remote, OpenSearchEngine) and remote.posts_index == "p-posts"
    with pytest.raises(ValueError):
        engine_from_url("postgresql://db/search")
