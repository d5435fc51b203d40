"""`python -m notifier_svc.redrive`: put the pushes that ran out of retries (the push DLQ) back
for a fresh set of attempts, once the receiving side is fixed. Reads the notifier's own
settings from the environment, as the service does."""

import asyncio

import aioboto3

from chassis.db import Database

from .delivery import redrive
from .settings import NotifierSettings


async def main() -> int:
    settings = NotifierSettings()
    db = Database(settings.database_url)
    try:
        async with aioboto3.Session().client("sqs", **settings.aws_client_kwargs()) as sqs:
            url = (await sqs.get_queue_url(QueueName=settings.queue_prefix + settings.push_dlq)
                   )["QueueUrl"]
            moved = await redrive(db, sqs, url)
    finally:
        await db.dispose()
    print(f"{moved} pushes back in line; the running notifier sends them")
    return moved


if __name__ == "__main__":
    asyncio.run(main())
