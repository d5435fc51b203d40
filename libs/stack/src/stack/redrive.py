"""`asyncsns-redrive QUEUE`: move the messages of QUEUE-dlq back to QUEUE, to be consumed again."""

import argparse
import asyncio

import aioboto3

from chassis.consumer import redrive

from .provision import LOCAL_CREDENTIALS
from .topology import TOPOLOGY


async def redrive_queue(queue: str, *, endpoint_url: str | None, region: str,
                        limit: int = 10_000) -> int:
    """Move up to `limit` messages from the queue's DLQ back to it; returns how many moved."""
    kwargs = {"region_name": region}
    if endpoint_url:
        kwargs.update(endpoint_url=endpoint_url, **LOCAL_CREDENTIALS)
    async with aioboto3.Session().client("sqs", **kwargs) as sqs:
        queue_url = (await sqs.get_queue_url(QueueName=queue))["QueueUrl"]
        dlq_url = (await sqs.get_queue_url(QueueName=f"{queue}-dlq"))["QueueUrl"]
        return await redrive(sqs, dlq_url=dlq_url, queue_url=queue_url, limit=limit)


def main(argv: list[str] | None = None) -> None:
    """`asyncsns-redrive QUEUE_NAME [--endpoint URL] [--region R] [--limit N]`"""
    parser = argparse.ArgumentParser(prog="asyncsns-redrive", description=__doc__)
    parser.add_argument("queue", help="the consumer's queue (not the -dlq)")
    parser.add_argument("--endpoint", help="moto's URL; leave out for real AWS")
    parser.add_argument("--region", default=TOPOLOGY.region)
    parser.add_argument("--limit", type=int, default=10_000)
    args = parser.parse_args(argv)
    moved = asyncio.run(redrive_queue(args.queue.removesuffix("-dlq"), endpoint_url=args.endpoint,
                                      region=args.region, limit=args.limit))
    print(f"moved {moved} message(s) from {args.queue.removesuffix('-dlq')}-dlq back")


if __name__ == "__main__":
    main()
