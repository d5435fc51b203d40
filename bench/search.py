"""`python -m bench.search`: the embedded search engine under a realistic query mix.

Fills an EmbeddedSearch (a temporary SQLite file) with synthetic posts — Japanese and
English, hashtags, a few hundred authors, some followers-only and direct posts, spread
over 60 days — then runs queries (Japanese substrings and dictionary forms, English words,
`from:`, `#tag`, phrases, exclusions, dates) from one client and from 32 concurrent
asyncio clients, each as one of 20 viewers who follow 50 authors and have blocked 5.
Target on 2 cores: p99 <= 50 ms.

Words are drawn from a Zipf–Mandelbrot law, p(rank k) ~ 1 / (k + 10), over ~2,000 nouns
per language, for posts and queries alike: the commonest noun is in ~3% of posts and is
also the commonest query. `--hot` adds the worst case, a noun in ~25% of posts.
"""

import argparse
import asyncio
import itertools
import random
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from query_svc.search import PostDoc, Viewer
from query_svc.search.embedded import EmbeddedSearch

from .load import Result

JA_NOUNS = (
    "ラーメン", "寿司", "東京", "大阪", "京都", "天気", "電車", "会社", "映画", "音楽", "猫", "犬",
    "コーヒー", "写真", "旅行", "週末", "仕事", "勉強", "料理", "公園", "桜", "雨", "雪", "夏休み",
    "新幹線", "居酒屋", "カレー", "うどん", "温泉", "北海道", "沖縄", "友達", "家族", "ゲーム",
    "アニメ", "漫画", "本屋", "図書館", "散歩", "ランチ", "朝ごはん", "パン", "ケーキ", "紅茶",
    "ビール", "焼き鳥", "餃子", "味噌汁", "海", "山", "花火", "お祭り", "誕生日", "買い物", "駅前",
)
KANJI = "日月火水木金土山川田中本人大小上下左右東西南北春夏秋冬朝昼夜花鳥風雪雨空海森林石岩"
KANA = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモラリルレロワン"
JA_ADJECTIVES = (
    "美味しかった", "美味しい", "楽しかった", "楽しい", "寒い", "暑かった", "眠い", "忙しい",
    "面白かった", "面白い", "綺麗だった", "最高だった", "大変だった", "嬉しい", "悲しかった",
    "高かった", "安い", "懐かしい",
)
JA_DICTIONARY = ("美味しい", "楽しい", "面白い", "暑い", "悲しい", "高い")
JA_TEMPLATES = (
    "今日は{n1}で{n2}を食べた。{a}！", "{n1}の{n2}が{a}。", "週末に{n1}へ行って{n2}を見た、{a}",
    "{n1}と{n2}、どっちも{a}", "久しぶりの{n1}。{n2}も{a}です", "{n1}に行きたいな。{n2}は{a}",
)
EN_NOUNS = (
    "coffee", "morning", "work", "code", "python", "rust", "release", "bug", "deploy", "server",
    "music", "concert", "game", "movie", "book", "train", "station", "weather", "rain",
    "weekend", "friends", "family", "dinner", "lunch", "pizza", "ramen", "sushi", "travel",
    "tokyo", "london", "photo", "camera", "park", "walk", "gym", "review", "meeting", "design",
    "cat", "dog", "garden", "spring", "summer", "winter", "holiday", "beach", "mountain",
    "news", "story", "launch", "team", "project", "database", "search", "index", "cloud",
)
EN_FILLER = ("the", "a", "and", "to", "of", "in", "is", "it", "my", "with", "for", "today",
             "really", "just", "new", "great", "finally", "again", "so", "at", "this")
SYLLABLES = ("ka", "ro", "mi", "ten", "su", "lo", "ver", "dan", "el", "fi", "nor", "ba", "tre")
TAGS = ("ラーメン", "旅行", "写真", "猫", "カフェ", "映画", "音楽", "ゲーム", "料理", "桜",
        "python", "rust", "music", "photo", "travel", "coffee", "cats", "books", "running",
        "devlife", "news", "tokyo", "food", "art")


class Zipf:
    """Draws from `items` with p(rank k) ~ 1 / (k + 10)."""

    def __init__(self, items: list[str]) -> None:
        self.items = items
        self.cum = list(itertools.accumulate(1 / (k + 10) for k in range(1, len(items) + 1)))

    def __call__(self, rng: random.Random) -> str:
        return rng.choices(self.items, cum_weights=self.cum)[0]


def vocabularies(seed: int = 5, size: int = 2000) -> tuple[Zipf, Zipf]:
    """~2,000 Japanese and English nouns: the real ones first (commonest), then made-up
    kanji compounds, katakana words and English-looking words."""
    rng = random.Random(seed)
    ja, en = list(JA_NOUNS), list(EN_NOUNS)
    while len(ja) < size:
        word = ("".join(rng.sample(KANJI, 2)) if rng.random() < 0.5
                else "".join(rng.choices(KANA, k=rng.randint(3, 5))))
        if word not in ja:
            ja.append(word)
    while len(en) < size:
        word = "".join(rng.choices(SYLLABLES, k=rng.randint(2, 3)))
        if word not in en:
            en.append(word)
    return Zipf(ja), Zipf(en)


def synthetic_posts(count: int, authors: int, hot: bool, seed: int = 7) -> list[PostDoc]:
    rng = random.Random(seed)
    ja, en = vocabularies()
    tags = Zipf(list(TAGS))
    now = datetime.now(UTC)
    posts = []
    for i in range(count):
        author = rng.randrange(authors)
        if rng.random() < 0.55:
            n1 = "ラーメン" if hot and rng.random() < 0.45 else ja(rng)
            text = rng.choice(JA_TEMPLATES).format(n1=n1, n2=ja(rng), a=rng.choice(JA_ADJECTIVES))
        else:
            words = [en(rng) if rng.random() < 0.4 else rng.choice(EN_FILLER)
                     for _ in range(rng.randint(6, 22))]
            text = " ".join(words).capitalize()
        chosen = tuple(dict.fromkeys(tags(rng) for _ in range(rng.choice((0, 0, 0, 1, 2)))))
        visibility = rng.choices(("public", "followers", "direct"), (85, 10, 5))[0]
        mentions = (f"user{rng.randrange(authors):03}",) if visibility == "direct" else ()
        text += "".join(f" #{t}" for t in chosen) + "".join(f" @{m}" for m in mentions)
        posts.append(PostDoc(
            post_id=f"post{i:07}", author_id=f"id{author:03}", author_username=f"user{author:03}",
            text=text, content_warning=None, hashtags=chosen, mentions=mentions,
            visibility=visibility, has_media=rng.random() < 0.2, reply_to=None,
            created_at=now - timedelta(seconds=rng.uniform(0, 60 * 86400)), version=1))
    return posts


def query_mix(count: int, authors: int, hot: bool, seed: int = 11) -> list[tuple[str, str]]:
    """(kind, q) pairs."""
    rng = random.Random(seed)
    ja, en = vocabularies()
    tags = Zipf(list(TAGS))
    week_ago = f"{datetime.now(UTC) - timedelta(days=7):%Y-%m-%d}"
    kinds = {
        "ja": lambda: ja(rng),
        "ja dictionary form": lambda: rng.choice(JA_DICTIONARY),
        "ja two words": lambda: f"{ja(rng)} {rng.choice(JA_ADJECTIVES)[:2]}",
        "en": lambda: en(rng),
        "en two words": lambda: f"{en(rng)} {en(rng)}",
        "phrase": lambda: f'"{rng.choice(EN_FILLER)} {en(rng)}"',
        "from:": lambda: f"from:user{rng.randrange(authors):03}",
        "from: word": lambda: f"from:user{rng.randrange(authors):03} {en(rng)}",
        "#tag": lambda: f"#{tags(rng)}",
        "#tag word": lambda: f"#{tags(rng)} {ja(rng)}",
        "exclusion": lambda: f"{en(rng)} -{en(rng)}",
        "since:": lambda: f"{ja(rng)} since:{week_ago}",
        "has:media": lambda: f"{en(rng)} has:media",
    }
    weights = {"ja": 20, "ja dictionary form": 6, "ja two words": 6, "en": 18,
               "en two words": 8, "phrase": 8, "from:": 6, "from: word": 4, "#tag": 8,
               "#tag word": 4, "exclusion": 4, "since:": 4, "has:media": 4}
    if hot:
        kinds["hot"] = lambda: rng.choice(("ラーメン", "ラーメン 美味", "#ラーメン ラーメン"))
        weights["hot"] = 5
    names = rng.choices(list(weights), list(weights.values()), k=count)
    return [(name, kinds[name]()) for name in names]


def _percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p))]


async def _run(engine: EmbeddedSearch, name: str, queries: list[tuple[str, str]],
               viewers: list[Viewer], clients: int,
               by_kind: dict[str, list[float]] | None = None) -> Result:
    latencies: list[float] = []
    errors = 0
    todo = iter(enumerate(queries))

    async def client() -> None:
        nonlocal errors
        for i, (kind, q) in todo:
            began = time.perf_counter()
            try:
                await engine.search_posts(q, viewers[i % len(viewers)], limit=20, cursor=None)
            except Exception:
                errors += 1
            latencies.append(ms := (time.perf_counter() - began) * 1000)
            if by_kind is not None:
                by_kind[kind].append(ms)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return Result(name=name, requests=len(latencies), errors=errors,
                  throughput=len(latencies) / elapsed, p50_ms=_percentile(latencies, 0.50),
                  p99_ms=_percentile(latencies, 0.99))


def _viewers(authors: int, seed: int = 3) -> list[Viewer]:
    rng = random.Random(seed)
    ids = [f"id{a:03}" for a in range(authors)]
    return [Viewer(user_id=f"id{u:03}", username=f"user{u:03}",
                   following=frozenset(rng.sample(ids, 50)), excluded=frozenset(rng.sample(ids, 5)))
            for u in rng.sample(range(authors), 20)]


def _size_mib(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.iterdir()) / 2**20


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="asyncsns-search-") as workdir:
        engine = EmbeddedSearch(str(Path(workdir) / "search.db"), readers=args.readers)
        await engine.start()
        try:
            posts = synthetic_posts(args.posts, args.authors, args.hot)
            began = time.perf_counter()
            for doc in posts:
                await engine.index_post(doc)
            filled = time.perf_counter() - began
            size = await asyncio.to_thread(_size_mib, Path(workdir))
            print(f"embedded search: {args.posts} posts by {args.authors} authors indexed in "
                  f"{filled:.1f} s ({args.posts / filled:.0f} posts/s, {size:.0f} MiB); "
                  f"{args.queries} queries per run, page size 20, {args.readers} reader threads"
                  + (", with the hot noun" if args.hot else ""))
            queries = query_mix(args.queries, args.authors, args.hot)
            viewers = _viewers(args.authors)
            await _run(engine, "warm-up", queries[:200], viewers, 4)
            by_kind: dict[str, list[float]] = defaultdict(list)
            for clients in (1, args.clients):
                result = await _run(engine, f"search_posts, {clients} client(s)", queries,
                                    viewers, clients, by_kind if clients == 1 else None)
                print(f"{result.line()}   (target p99 <= 50 ms)")
            print("one client, by kind of query:")
            for kind, times in sorted(by_kind.items(), key=lambda kv: -max(kv[1])):
                times.sort()
                print(f"  {kind:<20} {len(times):>5} queries   "
                      f"p50 {_percentile(times, .5):>7.2f} ms   "
                      f"p99 {_percentile(times, .99):>7.2f} ms   max {times[-1]:>7.2f} ms")
        finally:
            await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--authors", type=int, default=300)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--readers", type=int, default=1, help="reader threads")
    parser.add_argument("--hot", action="store_true",
                        help="also a noun in ~25%% of posts, and queries for it")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
