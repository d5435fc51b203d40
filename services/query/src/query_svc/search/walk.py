"""The embedded engine's ranking walk: the exact top of the ranking without scoring every match.

Scoring a match costs ~2 µs (FTS5's bm25() and the join that filters it), too slow when a
word is in a large share of 100,000 posts. Row keys follow creation time (`fts.post_key`),
so the walk ranks the matches of the newest time window first, then of older and wider
windows. A phrase adds at most idf * (k1 + 1) to BM25 (its term-frequency part saturates
below k1 + 1), so the recency factor at a window's start bounds what any older match can
still score: once the page's last row beats that bound, the walk stops. Each window is one
statement that ranks, filters and limits inside SQLite, so only a page's worth of rows
crosses into Python and the reader threads seldom wait for the GIL.

The bound needs each phrase's document count, which costs as much to count as FTS5's own
idf. Counts are cached with the index's insert and delete totals at the time: a later
count can only be lower by the deletes since, and idf only falls as the count rises, so
the cached count less those deletes still gives a valid bound.
"""

import math
import sqlite3
import threading
from dataclasses import dataclass

from .fts import KEY_BITS, PostPlan
from .ranking import RECENCY_MAX_HALVINGS

K1 = 1.2  # FTS5's bm25() constant
LOWEST, HIGHEST = -(2**63), 2**63 - 1  # row key bounds of an open-ended window
RARE = 2000  # phrases in at most this many documents are looked up before the bound counts them
FIRST_REACH = 1.25  # half-lives the first window adds for a search with words
GROWTH = 4  # until a page is full, each window spans 4 times all newer windows together


@dataclass(frozen=True)
class _Count:
    epoch: int
    hits: int
    inserted: int
    deleted: int


class HitCounts:
    """Documents matching each FTS5 expression, as of some earlier moment (shared by the
    reader threads)."""

    def __init__(self, size: int = 4096) -> None:
        self._counts: dict[str, _Count] = {}
        self._size = size
        self._lock = threading.Lock()

    def bounds(self, conn: sqlite3.Connection, match: str,
               totals: dict[str, int]) -> tuple[int, int]:
        """(at most, at least) how many documents match `match` now."""
        with self._lock:
            known = self._counts.get(match)
        if known and known.epoch == totals["epoch"]:
            deleted = totals["deleted"] - known.deleted
            inserted = totals["inserted"] - known.inserted
            if deleted + inserted <= max(50, known.hits // 10):
                return max(0, known.hits - deleted), known.hits + inserted
        hits = conn.execute("SELECT count(*) FROM post_text WHERE post_text MATCH ?",
                            (match,)).fetchone()[0]
        with self._lock:
            if len(self._counts) >= self._size:
                self._counts.clear()
            self._counts[match] = _Count(totals["epoch"], hits, totals["inserted"],
                                         totals["deleted"])
        return hits, hits


def top_posts(conn: sqlite3.Connection, plan: PostPlan, count: int, anchor_us: int,
              half_life_us: float, hit_counts: HitCounts) -> list[tuple[str, float, int]]:
    """The best `count` (post_id, score, created_us) rows of the plan, best first."""
    if not plan.windowed:
        return conn.execute(plan.sql, plan.params).fetchall()
    conn.execute("BEGIN")  # one snapshot for every window and for the counts behind the bound
    try:
        return _walk(conn, plan, count, anchor_us, half_life_us, hit_counts)
    finally:
        conn.execute("COMMIT")


def _walk(conn: sqlite3.Connection, plan: PostPlan, count: int, anchor_us: int,
          half_life_us: float, hit_counts: HitCounts) -> list[tuple[str, float, int]]:
    totals = dict(conn.execute("""
        SELECT name, value FROM counts
        UNION ALL SELECT 'oldest', min(id) FROM posts WHERE id >= 0
        UNION ALL SELECT 'newest', max(id) FROM posts""").fetchall())
    oldest, newest = totals["oldest"], totals["newest"]
    if oldest is None:
        return []
    floor = max(oldest, plan.since_key or oldest)  # no match of this plan has a lower key
    top_us = ((newest >> KEY_BITS) + 1) * 1000
    # The first window is expected to hold a few pages of matches and, when words rank
    # them, to reach where the bound usually lets the walk stop: the best of many matches
    # score about half the ceiling, which the recency factor takes a half-life or so to
    # close. Each statement pays FTS5's own idf count, so one window is cheaper than two.
    matches = max(1, hit_counts.bounds(conn, plan.match, totals)[0])
    start_us = top_us - (top_us - (floor >> KEY_BITS) * 1000) * min(1.0, 4 * count / matches)
    if plan.phrases:
        start_us -= FIRST_REACH * half_life_us
    best: list[tuple[str, float, int]] = []
    high = HIGHEST
    while True:
        low = (int(start_us) // 1000) << KEY_BITS
        last = low <= floor
        if last:
            low = plan.since_key if plan.since_key is not None else LOWEST
        best = sorted(best + scan_window(conn, plan, low, high, count),
                      key=lambda row: (row[1], row[2], row[0]), reverse=True)[:count]
        if last:
            return best
        if len(best) < count:  # not a page yet: a window as long as all before, and more
            start_us = top_us - (top_us - start_us) * (GROWTH + 1)
            high = low
            continue
        ceiling = relevance_ceiling(conn, plan.phrases, hit_counts, totals, low)
        # Every match still unseen has a key below `low`, so was created before `edge`.
        edge = (low >> KEY_BITS) * 1000
        bound = ceiling * 0.5 ** min(RECENCY_MAX_HALVINGS,
                                     max(0, anchor_us - edge) / half_life_us)
        _, score, created = best[-1]
        if score > bound or (score >= bound and created >= edge):
            return best
        # The next window reaches back to where the bound falls to this page's last score.
        halvings = math.log2(ceiling / score) if score > 0 else math.inf
        if halvings >= RECENCY_MAX_HALVINGS:  # the bound never falls that far: rank the rest
            start_us = (floor >> KEY_BITS) * 1000 - 1000
        else:
            start_us = min(edge - 1000, anchor_us - halvings * half_life_us - 1000)
        high = low


def scan_window(conn: sqlite3.Connection, plan: PostPlan, low: int, high: int,
                count: int) -> list[tuple[str, float, int]]:
    """The best `count` matches whose row keys lie in [low, high)."""
    params = plan.params | {"lo": low, "hi": high, "limit": count}
    return conn.execute(plan.sql, params).fetchall()


def relevance_ceiling(conn: sqlite3.Connection, phrases: tuple[str, ...],
                      hit_counts: HitCounts, totals: dict[str, int], below: int) -> float:
    """An upper bound of `-bm25()` for the matches with row keys below `below`.

    Each phrase adds at most idf * (k1 + 1), FTS5's idf being log((N - n + 0.5) / (n + 0.5)),
    at least 1e-6; fewer documents n only raise it, so a lower count is safe. A rare phrase
    (a dictionary form that is seldom written, an unusual word) adds nothing when none of
    those matches holds it, which a short lookup tells. A margin covers rounding.
    """
    ceiling = 0.0
    for phrase in phrases:
        fewest, most = hit_counts.bounds(conn, phrase, totals)
        if most <= RARE and not conn.execute(
                "SELECT 1 FROM post_text WHERE post_text MATCH ? AND rowid < ? LIMIT 1",
                (phrase, below)).fetchone():
            continue
        ceiling += max(1e-6, math.log((totals["live_posts"] - fewest + 0.5) / (fewest + 0.5)))
    return ceiling * (K1 + 1) * (1 + 1e-9)
