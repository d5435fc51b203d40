"""After a write scenario: wait until every event has been published and consumed."""

import json
import sqlite3
import time
from pathlib import Path

import boto3


def pending_events(data_dir: Path) -> int:
    """Events not yet through: unpublished outbox rows plus messages on every queue."""
    outputs = json.loads((data_dir / "outputs.json").read_text())
    sqs = boto3.client("sqs", endpoint_url=outputs["endpoint_url"],
                       region_name=outputs["region"], aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    waiting = 0
    for name, url in outputs["queues"].items():
        if name.endswith("-dlq"):
            continue
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        waiting += sum(int(v) for v in attributes["Attributes"].values())
    for database in data_dir.glob("*.db"):
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            waiting += conn.execute(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()[0]
    return waiting


def wait_drained(data_dir: Path, timeout_s: float = 300.0) -> float | None:
    """Seconds until nothing is pending, or None if that took longer than `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if pending_events(data_dir) == 0:
            return time.monotonic() - started
        time.sleep(0.5)
    return None
