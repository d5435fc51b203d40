"""Message search, one behaviour for every search engine (the `engine` fixture in conftest.py:
the embedded engine always, OpenSearch when OPENSEARCH_URL names a server)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chassis.pagination import encode_cursor
from chassis.problems import Problem
from query_svc.search import MessageDoc, MessageScope, SearchEngine

T0 = (datetime.now(UTC) - timedelta(days=30)).replace(microsecond=0)
MINE = MessageScope(frozenset({"c1"}))


def message(message_id: str, text: str, *, channel: str = "c1", sender: str = "id-alice",
            at: datetime = T0, version: int = 1, **fields: Any) -> MessageDoc:
    return MessageDoc(message_id=message_id, channel_id=channel, sender_id=sender, text=text,
                      created_at=at, version=version, **fields)


async def write(engine: SearchEngine, *docs: MessageDoc) -> None:
    for doc in docs:
        await engine.index_message(doc)
    await engine.refresh()


async def found(engine: SearchEngine, q: str, scope: MessageScope = MINE,
                limit: int = 100) -> list[str]:
    return (await engine.search_messages(q, scope, limit=limit, cursor=None)).ids


async def every_page(engine: SearchEngine, q: str, scope: MessageScope,
                     limit: int) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        hits = await engine.search_messages(q, scope, limit=limit, cursor=cursor)
        pages.append(hits.ids)
        if hits.next_cursor is None:
            return pages
        cursor = hits.next_cursor


# --- text, as posts ----------------------------------------------------------------------

@pytest.mark.parametrize("q", ["ラーメン", "美味", "美味しい", "今日の", "ﾗｰﾒﾝ", "#ラーメン",
                               "ラーメン 美味"])
async def test_japanese_message_is_found_by_substrings_and_dictionary_form(engine, q):
    await write(engine, message("m1", "今日のラーメンは美味しかった"), message("m2", "雨が降る"))
    assert await found(engine, q) == ["m1"]


@pytest.mark.parametrize("q", ["ラーメン屋", "メンラー", "天気", "ラーメン -美味"])
async def test_japanese_message_is_not_found_by_what_it_does_not_contain(engine, q):
    await write(engine, message("m1", "今日のラーメンは美味しかった"))
    assert await found(engine, q) == []


async def test_words_phrases_exclusions_and_days(engine):
    day = datetime(2024, 3, 1, tzinfo=UTC)
    await write(engine, message("m1", "new york pizza", at=day),
                message("m2", "york is new", at=day + timedelta(days=1)),
                message("m3", "new pizza", at=day - timedelta(microseconds=1)))
    assert await found(engine, "new york") == ["m2", "m1"]
    assert await found(engine, '"new york"') == ["m1"]
    assert await found(engine, "new -pizza") == ["m2"]
    assert await found(engine, "new since:2024-03-01 until:2024-03-01") == ["m1"]
    assert await found(engine, "until:2024-02-29") == ["m3"]


async def test_sender_ids_narrow_to_the_named_senders(engine):
    await write(engine, message("a", "hello", sender="id-alice"),
                message("b", "hello", sender="id-bob", at=T0 + timedelta(seconds=1)))
    by = MessageScope(frozenset({"c1"}), sender_ids=frozenset({"id-bob"}))
    assert await found(engine, "hello", by) == ["b"]
    assert await found(engine, "from:bob", by) == ["b"]
    nobody = MessageScope(frozenset({"c1"}), sender_ids=frozenset())
    assert await found(engine, "hello", nobody) == []


# --- scope and pages -----------------------------------------------------------------------

async def test_only_the_scopes_channels_are_searched(engine):
    await write(engine, message("m1", "secret plan", channel="c1"),
                message("m2", "secret plan", channel="c2"),
                message("m3", "secret plan", channel="c1-x"))  # an id that extends c1's
    assert await found(engine, "secret") == ["m1"]
    assert sorted(await found(engine, "secret", MessageScope(frozenset({"c1", "c2"})))) == [
        "m1", "m2"]
    assert await found(engine, "secret", MessageScope(frozenset())) == []


async def test_newest_first_and_filtered_before_pagination(engine):
    others = [message(f"o{i:02}", "ramen", channel="elsewhere",
                      at=T0 + timedelta(hours=2 * i + 1)) for i in range(30)]
    mine = [message(f"k{i:02}", "ramen", at=T0 + timedelta(hours=2 * i)) for i in range(25)]
    await write(engine, *others, *mine)
    pages = await every_page(engine, "ramen", MINE, limit=10)
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [m for page in pages for m in page] == [f"k{i:02}" for i in reversed(range(25))]
    assert await found(engine, "since:2000-01-01", limit=3) == ["k24", "k23", "k22"]


# --- versions ------------------------------------------------------------------------------

async def test_an_edit_replaces_the_text_in_any_order_and_repeated(engine):
    v1, v2 = message("m1", "first draft", version=3), message("m1", "final text", version=5)
    for order in ([v1, v2], [v2, v1], [v1, v1, v2, v2, v1]):
        await engine.reset()
        await write(engine, *order)
        assert await found(engine, "final") == ["m1"]
        assert await found(engine, "draft") == []


async def test_a_deleted_message_leaves_and_older_versions_cannot_bring_it_back(engine):
    create, edit = message("m1", "breaking news", version=1), message("m1", "breaking", version=2)
    tombstone = message("m1", "", version=3, deleted=True)
    for order in ([create, edit, tombstone], [tombstone, create, edit], [edit, tombstone, create]):
        await engine.reset()
        await write(engine, *order)
        assert await found(engine, "breaking") == []


async def test_a_newer_version_with_the_same_text_keeps_the_message_found(engine):
    await write(engine, message("m1", "lunch?", version=1), message("m1", "lunch?", version=2))
    assert await found(engine, "lunch") == ["m1"]


async def test_reset_forgets_messages_and_their_versions(engine):
    await write(engine, message("m1", "hello", version=9))
    await engine.reset()
    await engine.refresh()
    assert await found(engine, "hello") == []
    await write(engine, message("m1", "hello again", version=1))
    assert await found(engine, "again") == ["m1"]


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("q", ["", "has:media", "ramen has:media", "-spam", "🍜",
                               "since:2024-13-01"])
async def test_bad_queries_are_problems_naming_q(engine, q):
    with pytest.raises(Problem) as caught:
        await engine.search_messages(q, MINE, limit=10, cursor=None)
    assert caught.value.status == 422
    assert caught.value.extra["errors"][0]["field"] == "q"


@pytest.mark.parametrize("cursor", ["%%%", encode_cursor({"x": 1}),
                                    encode_cursor({"q": 0, "k": ["p"]})])
async def test_malformed_cursors_are_400_problems_naming_cursor(engine, cursor):
    await write(engine, message("m1", "hello"))
    with pytest.raises(Problem) as caught:
        await engine.search_messages("hello", MINE, limit=10, cursor=cursor)
    assert caught.value.status == 400
    assert caught.value.extra["errors"][0]["field"] == "cursor"


async def test_a_message_cursor_belongs_to_its_query(engine):
    await write(engine, message("m1", "hello world"),
                message("m2", "hello world", at=T0 - timedelta(hours=1)))
    hits = await engine.search_messages("hello", MINE, limit=1, cursor=None)
    assert hits.ids == ["m1"] and hits.next_cursor
    with pytest.raises(Problem) as caught:
        await engine.search_messages("world", MINE, limit=1, cursor=hits.next_cursor)
    assert caught.value.extra["errors"][0]["field"] == "cursor"
