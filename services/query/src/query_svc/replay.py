"""Rebuild the query service's read models and search index from the event archive.

`python -m query_svc.replay --database-url URL [--search-url URL]` reads every archived
event once, in order, and applies the same handlers the live consumers use to a fresh
store and a fresh index. The inbox is filled as it goes, so when the rebuilt store takes
over, redelivered events are recognised as already applied.
"""

import argparse
import asyncio
import sys

import aioboto3
from sqlalchemy import func, select

from chassis.consumer import apply_event
from chassis.db import Database, ensure_database

from .archive import read_archive
from .models import chat_members, chat_messages, metadata, posts, users
from .projections import Projector
from .search.factory import engine_from_url
from .settings import QuerySettings


async def replay(settings: QuerySettings) -> int:
    """Apply every archived event to the (empty) store and index `settings` name."""
    if settings.database_url.startswith("postgresql"):
        await ensure_database(settings.database_url)
    db = Database(settings.database_url)
    engine = engine_from_url(settings.resolved_search_url(),
                             refresh_interval=settings.search_refresh_interval)
    try:
        await db.create_all(metadata)
        async with db.sessions() as session:
            existing = sum([(await session.execute(select(func.count()).select_from(t)))
                            .scalar_one() for t in (users, posts, chat_members, chat_messages)])
        if existing:
            raise SystemExit(f"{settings.database_url} is not a fresh store ({existing} rows)")
        await engine.start()
        await engine.reset()
        projector = Projector(fanout_threshold=settings.fanout_threshold,
                              follow_backfill=settings.follow_backfill, search=engine, db=db)
        inbox = metadata.tables["inbox"]
        consumers = projector.handlers()
        applied = 0
        async with aioboto3.Session().client("s3", **settings.aws_client_kwargs()) as s3:
            async for event in read_archive(s3, settings.archive_bucket):
                for queue, handlers in consumers.items():
                    if event.type in handlers:
                        applied += await apply_event(db, inbox, queue, handlers[event.type],
                                                     event)
        return applied
    finally:
        await engine.close()
        await db.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="the fresh store to build")
    parser.add_argument("--search-url", default="", help="the fresh index to build")
    args = parser.parse_args(argv)
    settings = QuerySettings(database_url=args.database_url, search_url=args.search_url)
    count = asyncio.run(replay(settings))
    sys.stdout.write(f"replayed {count} events into {args.database_url}\n")


if __name__ == "__main__":
    main()
