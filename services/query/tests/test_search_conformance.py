"""One behaviour for every search engine: each test runs against each engine reachable.

The embedded engine always runs (a fresh SQLite file per test); OpenSearch runs when
OPENSEARCH_URL names a server (fresh indexes with a random prefix per test): the `engine`
fixture in conftest.py.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chassis.pagination import encode_cursor
from chassis.problems import Problem
from query_svc.search import PostDoc, SearchEngine, UserDoc, Viewer

# Recent, so that recency scores stay far from underflow whenever the suite runs.
T0 = (datetime.now(UTC) - timedelta(days=30)).replace(microsecond=0)
ANYONE = Viewer(user_id="id-viewer", username="viewer")


def post(post_id: str, text: str, *, author: str = "alice", at: datetime = T0,
         version: int = 1, **fields: Any) -> PostDoc:
    values: dict[str, Any] = {
        "post_id": post_id, "author_id": f"id-{author}", "author_username": author,
        "text": text, "content_warning": None, "hashtags": (), "mentions": (),
        "visibility": "public", "has_media": False, "reply_to": None, "created_at": at,
        "version": version,
    }
    return PostDoc(**(values | fields))


async def write(engine: SearchEngine, *docs: PostDoc | UserDoc) -> None:
    for doc in docs:
        if isinstance(doc, PostDoc):
            await engine.index_post(doc)
        else:
            await engine.index_user(doc)
    await engine.refresh()


async def found(engine: SearchEngine, q: str, viewer: Viewer = ANYONE,
                limit: int = 100) -> list[str]:
    return (await engine.search_posts(q, viewer, limit=limit, cursor=None)).ids


async def every_page(engine: SearchEngine, q: str, viewer: Viewer, limit: int,
                     users: bool = False) -> list[list[str]]:
    search = engine.search_users if users else engine.search_posts
    pages, cursor = [], None
    while True:
        hits = await search(q, viewer, limit=limit, cursor=cursor)
        pages.append(hits.ids)
        if hits.next_cursor is None:
            return pages
        cursor = hits.next_cursor


# --- CJK -------------------------------------------------------------------------------------

@pytest.mark.parametrize("q", ["ラーメン", "美味", "美味しい", "#ラーメン", "今日の", "日", "た",
                               "ﾗｰﾒﾝ", "ラーメン 美味"])
async def test_japanese_post_is_found_by_substrings_dictionary_form_and_tag(engine, q):
    await write(engine, post("p1", "今日のラーメンは美味しかった #ラーメン",
                             hashtags=("ラーメン",)),
                post("p2", "雨が降る"))
    assert await found(engine, q) == ["p1"]


@pytest.mark.parametrize("q", ["ラーメン屋", "美味しくない", "メンラー", "天気", "ラーメン -美味",
                               "#美味しい"])
async def test_japanese_post_is_not_found_by_what_it_does_not_contain(engine, q):
    await write(engine, post("p1", "今日のラーメンは美味しかった", hashtags=("ラーメン",)))
    assert await found(engine, q) == []


async def test_cjk_substrings_do_not_span_punctuation_or_spaces(engine):
    await write(engine, post("p1", "東京、タワー"), post("p2", "東京タワー"))
    assert await found(engine, "京タ") == ["p2"]
    assert sorted(await found(engine, "東京 タワー")) == ["p1", "p2"]


async def test_exact_occurrence_ranks_above_the_dictionary_form_stem(engine):
    await write(engine, post("inflected", "昨日のケーキは美味しかった"),
                post("exact", "このケーキは美味しい"))
    assert await found(engine, "美味しい") == ["exact", "inflected"]


async def test_chinese_and_korean_are_found_by_substrings(engine):
    await write(engine, post("zh", "我喜欢吃拉面"), post("ko", "라면이 정말 맛있었다"))
    assert await found(engine, "拉面") == ["zh"]
    assert await found(engine, "喜欢") == ["zh"]
    assert await found(engine, "맛있다") == ["ko"]
    assert await found(engine, "라면") == ["ko"]


async def test_hashtag_filter_is_exact_and_width_insensitive(engine):
    await write(engine, post("p1", "醤油 #ラーメン", hashtags=("ラーメン",)),
                post("p2", "ラーメン屋に行った", hashtags=("ラーメン屋",)),
                post("p3", "#Café time", hashtags=("café",)))
    assert await found(engine, "#ラーメン") == ["p1"]
    assert await found(engine, "#ﾗｰﾒﾝ") == ["p1"]
    assert await found(engine, "#CAFÉ") == ["p3"]


# --- Latin words and operators --------------------------------------------------------------

async def test_latin_words_match_whole_words_case_and_width_insensitively(engine):
    await write(engine, post("p1", "Best RAMEN in town!"), post("p2", "ramens are plural"))
    assert await found(engine, "ramen") == ["p1"]
    assert await found(engine, "Ｒａｍｅｎ") == ["p1"]
    assert await found(engine, "rame") == []


async def test_words_are_anded_and_phrases_need_order_and_adjacency(engine):
    await write(engine, post("p1", "new york pizza"), post("p2", "york is new"),
                post("p3", "new pizza"))
    assert sorted(await found(engine, "new york")) == ["p1", "p2"]
    assert await found(engine, '"new york"') == ["p1"]
    assert await found(engine, '"york new"') == []


async def test_from_takes_any_of_several_authors(engine):
    await write(engine, post("a", "hello", author="alice"), post("b", "hello", author="bob"),
                post("c", "hello", author="carol"))
    assert await found(engine, "hello from:alice") == ["a"]
    assert sorted(await found(engine, "from:alice from:@Bob")) == ["a", "b"]


async def test_exclusions_drop_words_and_phrases(engine):
    await write(engine, post("p1", "coffee with milk"), post("p2", "coffee black"),
                post("p3", "milk with coffee"))
    assert sorted(await found(engine, "coffee -black")) == ["p1", "p3"]
    assert sorted(await found(engine, 'coffee -"with milk"')) == ["p2", "p3"]
    assert await found(engine, "from:alice -milk") == ["p2"]


async def test_since_and_until_take_whole_utc_days_inclusive(engine):
    day = datetime(2024, 3, 1, tzinfo=UTC)
    await write(engine, post("before", "news", at=day - timedelta(microseconds=1)),
                post("first", "news", at=day),
                post("last", "news", at=day + timedelta(days=1, microseconds=-1000)),
                post("after", "news", at=day + timedelta(days=1)))
    assert sorted(await found(engine, "news since:2024-03-01 until:2024-03-01")) == [
        "first", "last"]
    assert sorted(await found(engine, "since:2024-03-02")) == ["after"]
    assert sorted(await found(engine, "news until:2024-02-29")) == ["before"]


async def test_has_media_keeps_posts_with_media(engine):
    await write(engine, post("p1", "photo", has_media=True), post("p2", "photo"))
    assert await found(engine, "photo has:media") == ["p1"]
    assert await found(engine, "has:media") == ["p1"]


async def test_content_warning_text_is_searchable(engine):
    await write(engine, post("p1", "the ending", content_warning="spoilers"))
    assert await found(engine, "spoilers") == ["p1"]


# --- who sees what ---------------------------------------------------------------------------

async def test_visibility_public_followers_direct_and_own(engine):
    await write(engine,
                post("public", "secret plan", author="alice"),
                post("followers", "secret plan", author="alice", visibility="followers"),
                post("direct", "secret plan @bob", author="alice", visibility="direct",
                     mentions=("bob",)),
                post("mine", "secret plan", author="carol", visibility="direct"))
    stranger = Viewer("id-dave", "dave")
    follower = Viewer("id-erin", "erin", following=frozenset({"id-alice"}))
    mentioned = Viewer("id-bob", "Bob")
    carol = Viewer("id-carol", "carol")
    alice = Viewer("id-alice", "alice")
    assert await found(engine, "secret", stranger) == ["public"]
    assert sorted(await found(engine, "secret", follower)) == ["followers", "public"]
    assert sorted(await found(engine, "secret", mentioned)) == ["direct", "public"]
    assert sorted(await found(engine, "secret", carol)) == ["mine", "public"]
    assert sorted(await found(engine, "secret", alice)) == ["direct", "followers", "public"]


async def test_excluded_authors_never_appear(engine):
    await write(engine, post("p1", "hello", author="troll"), post("p2", "hello @me",
                author="troll", visibility="direct", mentions=("me",)),
                post("p3", "hello", author="friend"))
    viewer = Viewer("id-me", "me", following=frozenset({"id-troll"}),
                    excluded=frozenset({"id-troll"}))
    assert await found(engine, "hello", viewer) == ["p3"]
    assert await found(engine, "from:troll", viewer) == []


@pytest.mark.parametrize("q", ["ramen", "#ramen", "since:2024-01-01", "from:cook from:spam"])
async def test_filtering_happens_before_pagination(engine, q):
    spam = [post(f"s{i:02}", "ramen #ramen", author="spam", hashtags=("ramen",),
                 at=T0 + timedelta(hours=100 + i)) for i in range(30)]
    hidden = [post(f"h{i:02}", "ramen #ramen", author="cook", hashtags=("ramen",),
                   visibility="followers", at=T0 + timedelta(hours=50 + i)) for i in range(5)]
    kept = [post(f"k{i:02}", "ramen #ramen", author="cook", hashtags=("ramen",),
                 at=T0 + timedelta(hours=i)) for i in range(25)]
    await write(engine, *spam, *hidden, *kept)
    viewer = Viewer("id-me", "me", excluded=frozenset({"id-spam"}))
    pages = await every_page(engine, q, viewer, limit=10)
    assert [len(page) for page in pages] == [10, 10, 5]
    flat = [post_id for page in pages for post_id in page]
    assert flat == [f"k{i:02}" for i in reversed(range(25))]  # same relevance: newest first


async def test_pages_follow_the_ranking_without_duplicates(engine):
    docs = [post(f"p{i:02}", "tea " * (1 + i % 4) + "cake", at=T0 - timedelta(days=i % 5))
            for i in range(23)]
    await write(engine, *docs)
    whole = await found(engine, "tea cake", limit=100)
    pages = await every_page(engine, "tea cake", ANYONE, limit=4)
    assert [post_id for page in pages for post_id in page] == whole
    assert len(whole) == 23


# --- versions ----------------------------------------------------------------------------

async def test_duplicate_and_reordered_writes_converge(engine):
    v1, v2 = post("p1", "first draft", version=1), post("p1", "final text", version=2)
    for order in ([v1, v2], [v2, v1], [v1, v1, v2, v2, v1]):
        await engine.reset()
        await write(engine, *order)
        assert await found(engine, "final") == ["p1"]
        assert await found(engine, "draft") == []


async def test_delete_wins_over_older_and_late_edits(engine):
    create, edit = post("p1", "breaking news", version=1), post("p1", "breaking update", version=2)
    for late in ([create, edit], [edit], [create]):
        await engine.reset()
        await engine.delete_post("p1", 3)
        await write(engine, *late)
        assert await found(engine, "breaking") == []
    await engine.reset()
    await write(engine, create)
    await engine.delete_post("p1", 2)
    await write(engine, edit)  # version 2 again: not newer than the tombstone
    assert await found(engine, "breaking") == []


async def test_a_newer_user_profile_replaces_the_older(engine):
    await write(engine, UserDoc("u1", "neko", "新しい名前", "", 1, 2),
                UserDoc("u1", "neko", "古い名前", "", 1, 1))
    assert (await engine.search_users("新しい", ANYONE, limit=10, cursor=None)).ids == ["u1"]
    assert (await engine.search_users("古い", ANYONE, limit=10, cursor=None)).ids == []


async def test_reset_forgets_posts_users_and_versions(engine):
    await write(engine, post("p1", "hello", version=5), UserDoc("u1", "hana", "Hana", "", 0, 1))
    await engine.reset()
    await engine.refresh()
    assert await found(engine, "hello") == []
    assert (await engine.search_users("hana", ANYONE, limit=10, cursor=None)).ids == []
    await write(engine, post("p1", "hello again", version=1))
    assert await found(engine, "again") == ["p1"]


# --- users ---------------------------------------------------------------------------------

async def test_users_by_username_prefix_japanese_name_and_bio(engine):
    await write(engine,
                UserDoc("u1", "Tanaka_Taro", "田中太郎", "ラーメンが好きです", 10, 1),
                UserDoc("u2", "tanaka", "Tanaka", "", 5, 1),
                UserDoc("u3", "tanabe", "田辺", "", 500, 1),
                UserDoc("u4", "sato", "佐藤", "I like tanaka's ramen", 50, 1))
    users = engine.search_users
    # Exact username, then prefixes by followers, then a bio match (whole word).
    assert (await users("tanaka", ANYONE, limit=10, cursor=None)).ids == ["u2", "u1", "u4"]
    assert (await users("@TANA", ANYONE, limit=10, cursor=None)).ids == ["u3", "u1", "u2"]
    assert (await users("田中", ANYONE, limit=10, cursor=None)).ids == ["u1"]
    assert (await users("太郎", ANYONE, limit=10, cursor=None)).ids == ["u1"]
    assert (await users("ラーメン", ANYONE, limit=10, cursor=None)).ids == ["u1"]
    blocker = Viewer("id-x", "x", excluded=frozenset({"u2"}))
    assert (await users("tanaka", blocker, limit=10, cursor=None)).ids == ["u1", "u4"]
    pages = await every_page(engine, "tana", ANYONE, limit=2, users=True)
    assert pages == [["u3", "u1"], ["u2"]]


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("q", ["", "   ", "x" * 501, "since:2024-02-30", "until:24-1-1",
                               "since:2024-03-02 until:2024-03-01", "-spam", '-"spam eggs"',
                               "has:video", "🍜"])
async def test_bad_queries_are_problems_naming_q(engine, q):
    with pytest.raises(Problem) as caught:
        await engine.search_posts(q, ANYONE, limit=10, cursor=None)
    assert caught.value.status == 422
    assert caught.value.extra["errors"][0]["field"] == "q"


async def test_blank_user_query_is_a_problem_naming_q(engine):
    with pytest.raises(Problem) as caught:
        await engine.search_users(" ", ANYONE, limit=10, cursor=None)
    assert caught.value.extra["errors"][0]["field"] == "q"


async def test_a_page_size_below_one_is_a_problem_naming_limit(engine):
    for search in (engine.search_posts, engine.search_users):
        with pytest.raises(Problem) as caught:
            await search("hello", ANYONE, limit=0, cursor=None)
        assert caught.value.extra["errors"][0]["field"] == "limit"


@pytest.mark.parametrize("cursor", ["%%%", "bm90IGpzb24", encode_cursor({"x": 1}),
                                    encode_cursor({"q": 0, "k": [1.0, 2, "p"], "a": 3})])
async def test_malformed_cursors_are_400_problems_naming_cursor(engine, cursor):
    await write(engine, post("p1", "hello"))
    with pytest.raises(Problem) as caught:
        await engine.search_posts("hello", ANYONE, limit=10, cursor=cursor)
    assert caught.value.status == 400
    assert caught.value.extra["errors"][0]["field"] == "cursor"


async def test_a_cursor_belongs_to_its_query(engine):
    await write(engine, post("p1", "hello world"), post("p2", "hello world", at=T0 - timedelta(1)))
    hits = await engine.search_posts("hello", ANYONE, limit=1, cursor=None)
    with pytest.raises(Problem) as caught:
        await engine.search_posts("world", ANYONE, limit=1, cursor=hits.next_cursor)
    assert caught.value.extra["errors"][0]["field"] == "cursor"


# --- ranking ---------------------------------------------------------------------------------

async def test_english_relevance_and_recency(engine):
    await write(engine,
                post("dense", "rust rust rust", at=T0),
                post("sparse", "I wrote some rust code today and then went for a long walk",
                     at=T0),
                post("old_dense", "rust rust rust", at=T0 - timedelta(weeks=8)),
                post("other", "python", at=T0))
    assert await found(engine, "rust") == ["dense", "sparse", "old_dense"]
