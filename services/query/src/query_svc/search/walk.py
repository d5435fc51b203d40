"""The embedded engine's ranking walk: the exact top of the ranking without scoring every match.

Scoring a match costs ~1.5 µs (FTS5's bm25() and the join that filters it), too slow when
a word is in a quarter of 100,000 posts. Row keys follow creation time (`fts.post_key`),
so FTS5 hands matches over newest first. A phrase adds at most idf * (k1 + 1) to BM25
(its term-frequency part saturates below k1 + 1), so the recency factor of a row's
creation time bounds what it and every older row can still score: once the page's last
row beats that bound, no row still to come can enter the page and the walk stops. Every
filter is in the statement, so rows that are not for this viewer never reach the walk.

The bound needs each phrase's document count, which is as costly to count as FTS5's own
idf. Counts are cached with the index's insert and delete totals at the time: a later
count can only be lower by the deletes since, and idf only falls as the count rises, so
the cached count less those deletes still gives a valid bound.
"""

import heapq
import math
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .fts import KEY_BITS, PostPlan
from .ranking import RECENCY_MAX_HALVINGS

K1 = 1.2  # FTS5's bm25() constant
BATCH = 256  # rows fetched from the walk's statement at a time


@dataclass(frozen=True)
class _Count:
    epoch: int
    hits: int
    inserted: int
    deleted: int


class HitCounts:
    """Documents matching each phrase, as of some earlier moment (shared by reader threads)."""

    def __init__(self, size: int = 4096) -> None:
        self._counts: dict[str, _Count] = {}
        self._size = size
        self._lock = threading.Lock()

    def fewest(self, conn: sqlite3.Connection, phrase: str, totals: dict[str, int]) -> int:
        """A number of documents that is at most how many match `phrase` now."""
        with self._lock:
            known = self._counts.get(phrase)
        if known and known.epoch == totals["epoch"]:
            deleted = totals["deleted"] - known.deleted
            changed = deleted + totals["inserted"] - known.inserted
            if changed <= max(50, known.hits // 10):
                return max(0, known.hits - deleted)
        hits = conn.execute("SELECT count(*) FROM post_text WHERE post_text MATCH ?",
                            (phrase,)).fetchone()[0]
        with self._lock:
            if len(self._counts) >= self._size:
                self._counts.clear()
            self._counts[phrase] = _Count(totals["epoch"], hits, totals["inserted"],
                                          totals["deleted"])
        return hits


def top_posts(conn: sqlite3.Connection, plan: PostPlan, count: int, anchor_us: int,
              half_life_us: float, hit_counts: HitCounts) -> list[tuple[str, float, int]]:
    """The best `count` (post_id, score, created_us) rows of the plan, best first."""
    if not plan.streamed:
        return conn.execute(plan.sql, plan.params).fetchall()
    conn.execute("BEGIN")  # one snapshot for the walk and for the counts behind its bound
    rows = conn.execute(plan.sql, plan.params)
    try:
        best = walk(rows, lambda: relevance_ceiling(conn, plan.phrases, hit_counts), count,
                    anchor_us, half_life_us)
    finally:
        rows.close()
        conn.execute("COMMIT")
    return [(post_id, score, created) for score, created, post_id in sorted(best, reverse=True)]


def walk(rows: sqlite3.Cursor, ceiling_of: Callable[[], float], count: int, anchor_us: int,
         half_life_us: float) -> list[tuple[float, int, str]]:
    """Keep the best `count` rows, newest key first, until no later row can enter.

    `ceiling_of()` gives the most relevance any match can have; it is only asked once the
    page is full (a search with fewer matches never needs it).
    """
    best: list[tuple[float, int, str]] = []  # a min-heap of (score, created_us, post_id)
    ceiling: float | None = None
    while batch := rows.fetchmany(BATCH):
        for post_id, score, created_us, row_key in batch:
            item = (score, created_us, post_id)
            if len(best) < count:
                heapq.heappush(best, item)
                continue
            if item > best[0]:
                heapq.heapreplace(best, item)
            if ceiling is None:
                ceiling = ceiling_of()
            # Every row still to come was created before `edge`: keys follow creation time.
            edge = ((row_key >> KEY_BITS) + 1) * 1000
            reach = ceiling * 0.5 ** min(RECENCY_MAX_HALVINGS,
                                         max(0, anchor_us - edge) / half_life_us)
            low_score, low_created, _ = best[0]
            if low_score > reach or (low_score >= reach and low_created >= edge):
                return best
    return best


def relevance_ceiling(conn: sqlite3.Connection, phrases: tuple[str, ...],
                      hit_counts: HitCounts) -> float:
    """An upper bound of `-bm25()` for this query: each phrase adds at most idf * (k1 + 1),
    FTS5's idf being log((N - n + 0.5) / (n + 0.5)), at least 1e-6 (a margin covers
    rounding). Fewer documents n can only raise it, so a lower count is safe."""
    totals = dict(conn.execute("SELECT name, value FROM counts").fetchall())
    ceiling = 0.0
    for phrase in phrases:
        hits = hit_counts.fewest(conn, phrase, totals)
        ceiling += max(1e-6, math.log((totals["live_posts"] - hits + 0.5) / (hits + 0.5)))
    return ceiling * (K1 + 1) * (1 + 1e-9)
