"""What the local moto server costs per event: CPU of its process per SNS event fanned out to
queues, and per message received and deleted, with and without a backlog waiting.

    python -m bench.moto [--events 1000] [--queues 4] [--backlog 0 5000]

It starts `stack.motoserver` as its own process (as the launcher does), publishes in batches
of ten with an `event_type` attribute to a topic whose queues subscribe with raw delivery and
a filter policy (as the topology's do), and drains every queue with one thread each, ten
messages per receive and one batch delete per receive (as the chassis consumer does).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3

from bench.call import pct
from chassis.testing import FAKE_AWS, REGION, free_port, wait_for_port

BODY = json.dumps({"id": "0" * 26, "type": "post.created", "version": 1,
                   "data": {"text": "an event of a typical size " * 8}})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Fanout:
    """A topic and its subscribed queues on the server at `endpoint`."""

    def __init__(self, endpoint: str, queues: int, tag: str) -> None:
        self.endpoint = endpoint
        self.sns = self.client("sns")
        sqs = self.client("sqs")
        self.topic = self.sns.create_topic(Name=f"bench-{tag}")["TopicArn"]
        self.urls = []
        for i in range(queues):
            url = sqs.create_queue(QueueName=f"bench-{tag}-{i}")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            sub = self.sns.subscribe(TopicArn=self.topic, Protocol="sqs",
                                     Endpoint=arn["Attributes"]["QueueArn"],
                                     ReturnSubscriptionArn=True)["SubscriptionArn"]
            for name, value in (("RawMessageDelivery", "true"), ("FilterPolicy", json.dumps(
                    {"event_type": ["post.created", "post.edited"]}))):
                self.sns.set_subscription_attributes(SubscriptionArn=sub, AttributeName=name,
                                                     AttributeValue=value)
            self.urls.append(url)

    def client(self, name: str) -> Any:
        return boto3.client(name, endpoint_url=self.endpoint, region_name=REGION, **FAKE_AWS)

    def publish(self, events: int) -> list[float]:
        """Publish in batches of ten; the latency of each batch call."""
        took = []
        entries = [{"Id": str(i), "Message": BODY, "MessageAttributes": {
            "event_type": {"DataType": "String", "StringValue": "post.created"}}}
            for i in range(10)]
        for _ in range(0, events, 10):
            started = time.perf_counter()
            self.sns.publish_batch(TopicArn=self.topic, PublishBatchRequestEntries=entries)
            took.append(time.perf_counter() - started)
        return took

    def drain(self, per_queue: int) -> list[float]:
        """Receive and delete `per_queue` messages from every queue; each receive's latency."""
        took: list[float] = []

        def one(url: str) -> None:
            sqs, got = self.client("sqs"), 0
            while got < per_queue:
                started = time.perf_counter()
                messages = sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
                took.append(time.perf_counter() - started)
                if messages:
                    sqs.delete_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(messages)])
                got += len(messages)

        threads = [threading.Thread(target=one, args=(url,)) for url in self.urls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return took


def run(pid: int, endpoint: str, events: int, queues: int, backlog: int) -> str:
    fanout = Fanout(endpoint, queues, f"{backlog}-{time.time_ns()}")
    fanout.publish(backlog)
    before, started = cpu_seconds(pid), time.perf_counter()
    published = fanout.publish(events)
    middle, published_s = cpu_seconds(pid), time.perf_counter() - started
    received = fanout.drain(events + backlog)
    after = cpu_seconds(pid)
    pub = [pct([1000 * s for s in published], p) for p in (50, 99)]
    rec = [pct([1000 * s for s in received], p) for p in (50, 99)]
    return (f"{queues} queues, {backlog:>5} waiting   "
            f"publish {events / published_s:6.0f} events/s, "
            f"moto {1000 * (middle - before) / events:5.2f} ms CPU per event, "
            f"batch call p50 {pub[0]:5.1f} p99 {pub[1]:6.1f} ms   |   receive+delete: moto "
            f"{1000 * (after - middle) / ((events + backlog) * queues):5.2f} ms CPU per message, "
            f"receive p50 {rec[0]:5.1f} p99 {rec[1]:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=4)
    parser.add_argument("--backlog", type=int, nargs="+", default=[0, 5000],
                        help="messages already waiting on each queue (one run per value)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "stack.motoserver", "--port", str(port),
             "--state", f"{tmp}/moto.state", "--save-interval", "3600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            print(f"stack.motoserver pid {server.pid}: {args.events} events published in "
                  f"batches of 10 to a topic with {args.queues} subscribed queues, then drained")
            for backlog in args.backlog:
                print(run(server.pid, f"http://127.0.0.1:{port}", args.events, args.queues,
                          backlog), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
