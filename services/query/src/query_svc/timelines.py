"""Keeping home timelines bounded: the oldest entries beyond the limit are trimmed."""

import asyncio
import logging

from sqlalchemy import delete, select

from chassis.db import Database

from .models import timeline
from .projections import Projector

log = logging.getLogger("query.timelines")


async def trim(db: Database, user_ids: set[str], keep: int) -> int:
    """Drop each user's home timeline entries beyond the newest `keep`; returns how many."""
    removed = 0
    for user_id in sorted(user_ids):
        oldest_kept = (select(timeline.c.post_id).where(timeline.c.user_id == user_id)
                       .order_by(timeline.c.post_id.desc()).offset(keep - 1).limit(1)
                       .scalar_subquery())
        async with db.transaction() as session:
            result = await session.execute(delete(timeline).where(
                timeline.c.user_id == user_id, timeline.c.post_id < oldest_kept))
            removed += result.rowcount or 0
    return removed


async def keep_bounded(db: Database, projector: Projector, keep: int, interval_s: float) -> None:
    """Every interval, trim the timelines that grew since the last pass."""
    while True:
        await asyncio.sleep(interval_s)
        grown, projector.grown = projector.grown, set()
        try:
            removed = await trim(db, grown, keep)
        except Exception:
            log.exception("trimming home timelines failed; retrying next pass")
            projector.grown |= grown
            continue
        if removed:
            log.info("trimmed %d home timeline entries of %d users", removed, len(grown))
