"""Where the lag probe's posts spent their time, from the embedded stack's own timestamps.

Each post's `post.created` row in the post service's outbox has `created_at` (the event,
just before its transaction commits) and `published_at` (the relay's pass that published
it); the query service's inbox has `processed_at` (its unit of work began applying the
event). With the moment the probe saw the post in the home timeline, that splits the lag
into the relay, the way to the query service's unit (moto, the queue, the consumer), and
the rest (the unit, its group commit, the probe's next poll). Clocks are the host's.
"""

import sqlite3
import statistics
from datetime import UTC, datetime
from pathlib import Path

STAGES = ("to the relay's publish", "on to the query unit", "from there until seen")


def _time(value: str) -> float:
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


def _read(database: Path, query: str, values: list[str]) -> list[tuple[str, ...]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        marks = ",".join("?" * len(values))
        return conn.execute(query.format(marks=marks), values).fetchall()


def breakdown(data_dir: Path, seen: list[tuple[str, float]]) -> str | None:
    """One line of p50/p99 per stage for the posts in `seen` (post id, wall-clock second
    the probe saw it); None if none of them can be traced."""
    if not seen:
        return None
    outbox = {aggregate.removeprefix("post:"): (event_id, created, published)
              for aggregate, event_id, created, published in _read(
                  data_dir / "post.db",
                  "SELECT aggregate, event_id, created_at, published_at FROM outbox "
                  "WHERE event_type = 'post.created' AND aggregate IN ({marks})",
                  [f"post:{post_id}" for post_id, _ in seen])}
    applied = dict(_read(data_dir / "query.db",
                         "SELECT event_id, processed_at FROM inbox "
                         "WHERE consumer = 'query-post' AND event_id IN ({marks})",
                         [event_id for event_id, _, _ in outbox.values()]))
    spans: list[tuple[float, float, float]] = []
    for post_id, seen_at in seen:
        if post_id not in outbox:
            continue
        event_id, created, published = outbox[post_id]
        if published is None or event_id not in applied:
            continue
        published_at, applied_at = _time(published), _time(applied[event_id])
        spans.append((published_at - _time(created), applied_at - published_at,
                      seen_at - applied_at))
    if not spans:
        return None
    parts = []
    for name, values in zip(STAGES, zip(*spans, strict=True), strict=True):
        cuts = statistics.quantiles(values, n=100) if len(values) > 1 else list(values) * 99
        parts.append(f"{name} {1000 * cuts[49]:.1f} / {1000 * cuts[98]:.1f}")
    return f"{'  where it went, p50 / p99 ms':<34} " + ", ".join(parts)
