"""The embedded engine's own promises: its early-stopping ranking walk returns exactly the
full ranking, row keys follow creation time, message pages need no sort, and the parser's
structure."""

import asyncio
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import query_svc.search.embedded as embedded
import query_svc.search.walk as walking
from query_svc.search import MessageDoc, MessageScope, PostDoc, Viewer
from query_svc.search.embedded import EmbeddedSearch
from query_svc.search.fts import SCHEMA, message_select
from query_svc.search.query import Match, parse_message_query, parse_post_query

NOW = datetime.now(UTC).replace(microsecond=0)
WORDS = ["ramen", "tea", "cake", "rain", "ラーメン", "美味しかった", "美味しい", "雨"]


def post(i: int, text: str, at: datetime, **fields: Any) -> PostDoc:
    values: dict[str, Any] = {
        "post_id": f"p{i:04}", "author_id": f"id-{i % 7}", "author_username": f"user{i % 7}",
        "text": text, "content_warning": None, "hashtags": ("tag",) if i % 3 == 0 else (),
        "mentions": (), "visibility": "followers" if i % 11 == 0 else "public",
        "has_media": i % 4 == 0, "reply_to": None, "created_at": at, "version": 1,
    }
    return PostDoc(**(values | fields))


@pytest.fixture
async def corpus(tmp_path) -> EmbeddedSearch:
    """600 posts over 200 days (a third of them in the same second), varied relevance."""
    rng = random.Random(5)
    engine = EmbeddedSearch(str(tmp_path / "search.db"))
    await engine.start()
    for i in range(600):
        at = NOW if i % 3 == 1 else NOW - timedelta(seconds=rng.uniform(0, 200 * 86400))
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        await engine.index_post(post(i, text, at))
    yield engine
    await engine.close()


@pytest.mark.parametrize("q", ["ramen", "ラーメン", "美味しい", "ramen tea", "#tag", "雨",
                               "from:user3", "cake -tea", "has:media", "tea since:2020-01-01"])
async def test_pages_of_the_stopping_walk_equal_the_full_ranking(corpus, q, monkeypatch):
    oldest = await corpus._read(lambda c: c.execute(
        "SELECT min(id) FROM posts WHERE id >= 0").fetchone()[0])
    lows, stopped_early = [], []
    scan, walk = walking.scan_window, walking._walk

    def watched_scan(conn, plan, low, high, count):
        lows.append(low)
        return scan(conn, plan, low, high, count)

    def watched_walk(*args):
        best = walk(*args)
        stopped_early.append(lows[-1] > oldest)  # its last window did not reach the oldest
        return best

    monkeypatch.setattr(walking, "scan_window", watched_scan)
    monkeypatch.setattr(walking, "_walk", watched_walk)
    viewer = Viewer("id-9", "nine", following=frozenset({"id-0"}), excluded=frozenset({"id-5"}))
    whole = (await corpus.search_posts(q, viewer, limit=1000, cursor=None)).ids
    paged, cursor = [], None
    while True:
        hits = await corpus.search_posts(q, viewer, limit=7, cursor=cursor)
        paged += hits.ids
        if not (cursor := hits.next_cursor):
            break
    assert paged == whole and len(whole) > 20
    if not q.startswith("has:"):  # has:media alone walks posts by time, not text matches
        assert any(stopped_early)


async def test_row_keys_follow_creation_time(corpus):
    keys = await corpus._read(lambda c: c.execute(
        "SELECT id, created_us FROM posts WHERE deleted = 0 ORDER BY id").fetchall())
    assert [created for _, created in keys] == sorted(created for _, created in keys)
    assert len({key for key, _ in keys}) == 600  # 200 posts in one second, all distinct


async def test_more_posts_in_one_millisecond_than_keys_still_rank_exactly(tmp_path):
    engine = EmbeddedSearch(str(tmp_path / "search.db"))
    await engine.start()
    for i in range(1100):
        await engine.index_post(post(i, "same moment" + " again" * (i % 3), NOW))
    viewer = Viewer("id-x", "x")
    whole = (await engine.search_posts("moment", viewer, limit=2000, cursor=None)).ids
    first = await engine.search_posts("moment", viewer, limit=50, cursor=None)
    assert len(whole) == 1000 and first.ids == whole[:50]  # 100 are followers-only
    await engine.close()


async def test_posts_past_the_recency_floor_rank_by_relevance(tmp_path):
    engine = EmbeddedSearch(str(tmp_path / "search.db"))
    await engine.start()
    long_ago = NOW - timedelta(days=3 * 365)
    for i in range(40):
        words = "tea " * (1 + i % 5) + "cake " * (i % 3)
        await engine.index_post(post(i, words, long_ago - timedelta(days=i), visibility="public",
                                     hashtags=()))
    viewer = Viewer("id-x", "x")
    whole = (await engine.search_posts("tea", viewer, limit=100, cursor=None)).ids
    first = await engine.search_posts("tea", viewer, limit=5, cursor=None)
    assert len(whole) == 40 and first.ids == whole[:5]
    assert whole[0] == "p0009"  # the newest of the densest: five times "tea" and no "cake"
    await engine.close()


async def test_an_index_laid_out_by_other_code_is_rebuilt_empty(tmp_path):
    path = tmp_path / "search.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE posts (id INTEGER PRIMARY KEY, post_id TEXT)")
    old.commit()
    old.close()
    engine = EmbeddedSearch(str(path))
    await engine.start()
    await engine.index_post(post(1, "fresh start", NOW))
    assert (await engine.search_posts("fresh", Viewer("id-x", "x"), limit=5,
                                      cursor=None)).ids == ["p0001"]
    await engine.close()


def test_parsed_queries_keep_phrases_stems_and_filters():
    query = parse_post_query('美味しい "New  York" -"very hot" #Ramen from:@Ann has:media')
    assert query.required == (Match("美味しい", cjk=True, stem="美味し"),
                              Match("new york", cjk=False))
    assert query.excluded == ((Match("very hot", cjk=False),),)
    assert query.tags == ("ramen",) and query.authors == ("ann",) and query.has_media
    assert parse_post_query("ラーメン屋").required == (Match("ラーメン屋", cjk=True),)
    assert parse_post_query('"美味しい"').required == (Match("美味しい", cjk=True),)


@pytest.mark.parametrize("q", ["ramen", "ramen -tea from:x", "since:2024-01-01"])
def test_a_page_of_messages_is_read_in_key_order_without_sorting(q):
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    sql, params = message_select(parse_message_query(q), MessageScope(frozenset({"c1", "c2"}),
                                                                      frozenset({"id-x"})),
                                 after=12345, limit=21)
    plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert plan.startswith("SCAN message_text VIRTUAL TABLE") and "TEMP B-TREE" not in plan


async def test_messages_of_one_millisecond_page_without_loss_or_repeats(tmp_path):
    engine = EmbeddedSearch(str(tmp_path / "search.db"))
    await engine.start()
    for i in range(1100):  # more than one millisecond's keys
        await engine.index_message(MessageDoc(f"m{i:04}", f"c{i % 2}", "id-a", "same moment",
                                              NOW, 1))
    scope = MessageScope(frozenset({"c0"}))
    paged, cursor = [], None
    while True:
        hits = await engine.search_messages("moment", scope, limit=100, cursor=cursor)
        paged += hits.ids
        if not (cursor := hits.next_cursor):
            break
    assert sorted(paged) == [f"m{i:04}" for i in range(0, 1100, 2)]
    assert len(paged) == len(set(paged))
    await engine.close()


async def test_writes_at_once_commit_together_and_a_failing_one_leaves_nothing(
        tmp_path, monkeypatch):
    tokens = embedded.index_tokens

    def poisoned(text: str) -> str:  # fails after the document's row is written
        if "poison" in text:
            raise ValueError("poison")
        return tokens(text)

    monkeypatch.setattr(embedded, "index_tokens", poisoned)
    engine = EmbeddedSearch(str(tmp_path / "search.db"))
    await engine.start()
    commits = 0
    run_group = embedded._run_group

    def counted(conn, group):
        nonlocal commits
        commits += 1
        return run_group(conn, group)

    monkeypatch.setattr(embedded, "_run_group", counted)
    docs = [post(i, "poison" if i == 7 else f"tea number{i}", NOW, visibility="public")
            for i in range(40)]
    outcomes = await asyncio.gather(*(engine.index_post(d) for d in docs), return_exceptions=True)
    assert [i for i, o in enumerate(outcomes) if isinstance(o, ValueError)] == [7]
    assert commits < 10, "writes that arrived together shared commits"
    hits = await engine.search_posts("tea", Viewer("id-x", "x"), limit=100, cursor=None)
    assert sorted(hits.ids) == sorted(d.post_id for i, d in enumerate(docs) if i != 7)
    stored = await engine._read(lambda c: c.execute(
        "SELECT count(*) FROM posts WHERE post_id = 'p0007'").fetchone()[0])
    assert stored == 0, "the failing write's row was rolled back with it"
    await engine.close()
