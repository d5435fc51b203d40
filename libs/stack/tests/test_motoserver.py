"""The persistent moto server: Cognito users, queues and messages survive a restart."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sns.models import sns_backends
from moto.sqs.models import SQSBackend

from chassis.testing import FAKE_AWS, REGION, free_port, wait_for_port
from stack import moto_patches
from stack.moto_patches import (
    keep_published_few,
    make_receipt_handles_quickly,
    match_filters_quickly,
    name_once,
    pick_attributes_quickly,
    take_sqs_shortcuts,
)
from stack.provision import provision
from stack.topology import TOPOLOGY


def start_moto(state: Path, save_interval: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stack.motoserver", "--port", str(port),
                             "--state", str(state), "--save-interval", str(save_interval)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_port(port)
    return proc, f"http://127.0.0.1:{port}"


@contextmanager
def moto_server(state: Path) -> Iterator[str]:
    """The server as its own process; leaving the block stops it with SIGTERM, like the launcher."""
    proc, endpoint = start_moto(state, save_interval=0.5)
    try:
        yield endpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr.decode()


def client(name: str, endpoint: str):
    return boto3.client(name, endpoint_url=endpoint, region_name=REGION, **FAKE_AWS)


def log_in(endpoint: str, client_id: str) -> dict:
    return client("cognito-idp", endpoint).initiate_auth(
        ClientId=client_id, AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": "alice", "PASSWORD": "correct horse"})["AuthenticationResult"]


def sub_of(endpoint: str, pool_id: str) -> str:
    user = client("cognito-idp", endpoint).admin_get_user(UserPoolId=pool_id, Username="alice")
    return next(a["Value"] for a in user["UserAttributes"] if a["Name"] == "sub")


def test_users_queues_and_messages_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "moto.state"
    with moto_server(state) as endpoint:
        before = provision(TOPOLOGY, endpoint, REGION)
        idp = client("cognito-idp", endpoint)
        idp.sign_up(ClientId=before["client_id"], Username="alice", Password="correct horse")
        idp.admin_confirm_sign_up(UserPoolId=before["user_pool_id"], Username="alice")
        sub = sub_of(endpoint, before["user_pool_id"])
        sqs = client("sqs", endpoint)
        queue = sqs.create_queue(QueueName="kept")["QueueUrl"]
        sqs.send_message(QueueUrl=queue, MessageBody="still here")
        client("s3", endpoint).put_object(Bucket=TOPOLOGY.buckets[0], Key="a/b.json", Body=b"{}")

    with moto_server(state) as endpoint:
        after = provision(TOPOLOGY, endpoint, REGION)
        assert log_in(endpoint, after["client_id"])["AccessToken"]
        assert sub_of(endpoint, after["user_pool_id"]) == sub
        assert after["user_pool_id"] == before["user_pool_id"]
        assert after["client_id"] == before["client_id"]
        sqs = client("sqs", endpoint)
        queue = sqs.get_queue_url(QueueName="kept")["QueueUrl"]
        messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
        assert [m["Body"] for m in messages] == ["still here"]
        body = client("s3", endpoint).get_object(Bucket=TOPOLOGY.buckets[0], Key="a/b.json")
        assert body["Body"].read() == b"{}"


def test_the_server_can_run_at_a_lower_cpu_priority(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stack.motoserver", "--port", str(port),
                             "--state", str(tmp_path / "state"), "--nice", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        threads = list(Path(f"/proc/{proc.pid}/task").iterdir())
        assert len(threads) > 1  # the listener's and waitress's threads have it too
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert {os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in threads} == {base + 5}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_periodic_save_keeps_state_when_the_process_is_killed(tmp_path: Path) -> None:
    state = tmp_path / "moto.state"
    proc, endpoint = start_moto(state, save_interval=0.2)
    try:
        client("sqs", endpoint).create_queue(QueueName="saved-in-passing")
        deadline = time.monotonic() + 10
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()  # no chance to save on the way out
        proc.communicate()

    with moto_server(state) as endpoint:
        assert client("sqs", endpoint).get_queue_url(QueueName="saved-in-passing")["QueueUrl"]


def test_an_unreadable_state_file_is_set_aside_not_lost(tmp_path: Path) -> None:
    state = tmp_path / "moto.state"
    state.write_bytes(b"not a pickle")

    with moto_server(state) as endpoint:
        assert client("sqs", endpoint).list_queues().get("QueueUrls", []) == []

    assert [p.read_bytes() for p in tmp_path.glob("moto.state.unreadable-*")] == [b"not a pickle"]


def test_the_sqs_shortcuts_keep_moto_answers() -> None:
    """The server's shortcut through moto's retention check still drops only expired messages.

    On a backend of its own: `mock_aws` would reset the backends of every moto server this
    test process runs for other tests."""
    take_sqs_shortcuts()
    sqs = SQSBackend(REGION, DEFAULT_ACCOUNT_ID)
    for name in ("fresh", "expired"):
        sqs.create_queue(name, MessageRetentionPeriod="60")
        sqs.send_message(name, "hello")
    (old,) = sqs.get_queue("expired")._messages
    old.sent_timestamp -= 61_000

    def bodies(name: str) -> list[str]:
        return [m.body for m in sqs.receive_message(name, 10, 0, 30)]

    assert bodies("fresh") == ["hello"]
    assert bodies("expired") == []


def counts(sqs: SQSBackend, name: str) -> tuple[str, str, str]:
    attributes = sqs.get_queue_attributes(name, ["All"])
    return tuple(str(attributes[f"ApproximateNumberOfMessages{kind}"])
                 for kind in ("", "Delayed", "NotVisible"))


def test_the_sqs_shortcuts_count_receive_and_delete_as_moto_does() -> None:
    take_sqs_shortcuts()
    sqs = SQSBackend(REGION, DEFAULT_ACCOUNT_ID)
    sqs.create_queue("q")
    for body in ("a", "b", "c"):
        sqs.send_message("q", body)
    sqs.send_message("q", "later", delay_seconds=60)
    assert counts(sqs, "q") == ("3", "1", "0")

    first, second = sqs.receive_message("q", 2, 0, 0)  # visible again at once
    assert (first.body, second.body) == ("a", "b")
    stale = first.receipt_handle
    (again,) = sqs.receive_message("q", 1, 0, 30)  # "a" again, with a new handle
    assert again.body == "a" and again.receipt_handle != stale
    assert counts(sqs, "q") == ("2", "1", "1")

    ok, failed = sqs.delete_message_batch("q", [
        {"Id": "old", "ReceiptHandle": stale},  # a message's earlier handle deletes it
        {"Id": "twice", "ReceiptHandle": again.receipt_handle},  # already gone: fine
        {"Id": "b", "ReceiptHandle": second.receipt_handle},
        {"Id": "bogus", "ReceiptHandle": "not-a-handle"}])
    assert ok == ["old", "twice", "b"]
    assert [(f["Id"], f["Code"]) for f in failed] == [("bogus", "ReceiptHandleIsInvalid")]
    assert [m.body for m in sqs.get_queue("q")._messages] == ["c", "later"]
    assert counts(sqs, "q") == ("1", "1", "0")


def sent_and_received(name: str, bodies: list[str], *,
                      visibility: int) -> tuple[SQSBackend, list]:
    """A backend with the shortcuts whose queue `name` got `bodies`, all received (in flight)."""
    take_sqs_shortcuts()
    sqs = SQSBackend(REGION, DEFAULT_ACCOUNT_ID)
    sqs.create_queue(name)
    for body in bodies:
        sqs.send_message(name, body)
    received: list = []
    while len(received) < len(bodies):
        received += sqs.receive_message(name, 10, 0, visibility)
    return sqs, received


def test_a_batch_delete_takes_out_messages_from_anywhere_in_the_queue() -> None:
    """Deletes stop scanning once every handle is found: messages far back in the queue,
    in any order, still go, and nothing else does."""
    sqs, received = sent_and_received("deep", [f"m{i}" for i in range(50)], visibility=30)
    picked = [received[i] for i in (49, 3, 25)]
    ok, failed = sqs.delete_message_batch("deep", [
        {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(picked)])
    assert ok == ["0", "1", "2"] and failed == []
    queue = sqs.get_queue("deep")
    assert [m.body for m in queue._messages] == [
        f"m{i}" for i in range(50) if i not in (3, 25, 49)]
    assert {m.body for m in queue.pending_messages} == {m.body for m in queue._messages}
    ok, _ = sqs.delete_message_batch("deep", [{"Id": "again",
                                               "ReceiptHandle": picked[0].receipt_handle}])
    assert ok == ["again"] and len(queue._messages) == 47


def test_names_are_converted_once_with_moto_answers() -> None:
    name_once()
    import moto.core.utils as utils
    import moto.sqs.models as sqs_models

    convert = sqs_models.camelcase_to_underscores
    assert convert.cache_info()  # type: ignore[attr-defined]
    for name, snake in (("ContentBasedDeduplication", "content_based_deduplication"),
                        ("ApproximateNumberOfMessagesNotVisible",
                         "approximate_number_of_messages_not_visible"),
                        ("QueueArn", "queue_arn"), ("", "")):
        assert convert(name) == utils.camelcase_to_underscores(name) == snake
    sqs = SQSBackend(REGION, DEFAULT_ACCOUNT_ID)
    sqs.create_queue("dedup.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    for _ in range(2):
        sqs.send_message("dedup.fifo", "same", group_id="g")
    assert len(sqs.get_queue("dedup.fifo")._messages) == 1
    assert sqs.get_queue_attributes("dedup.fifo", ["All"])["ContentBasedDeduplication"] == "true"


def test_deletes_racing_sends_lose_nothing() -> None:
    """Deletes rebuild the message list under the queue's lock: concurrent sends are kept."""
    sqs, received = sent_and_received("busy", [f"old-{i}" for i in range(2000)],
                                      visibility=300)

    def send() -> None:
        for i in range(2000):
            sqs.send_message("busy", f"new-{i}")

    sender = threading.Thread(target=send)
    sender.start()
    for start in range(0, len(received), 10):
        sqs.delete_message_batch("busy", [{"Id": str(i), "ReceiptHandle": m.receipt_handle}
                                          for i, m in enumerate(received[start:start + 10])])
    sender.join()
    assert sorted(m.body for m in sqs.get_queue("busy")._messages) == sorted(
        f"new-{i}" for i in range(2000))


def test_what_moto_keeps_of_deleted_and_published_messages_is_bounded(monkeypatch) -> None:
    """moto never trimmed the handles of deleted messages nor the list of published ones:
    memory and the snapshot grew with every message. The newest few are kept."""
    take_sqs_shortcuts()
    keep_published_few()
    monkeypatch.setattr(moto_patches, "KEPT_HANDLES", 50)
    sqs = SQSBackend(REGION, DEFAULT_ACCOUNT_ID)
    sqs.create_queue("churn")
    handles = []
    for i in range(200):
        sqs.send_message("churn", f"m{i}")
        (message,) = sqs.receive_message("churn", 1, 0, 30)
        sqs.delete_message_batch("churn", [{"Id": "1", "ReceiptHandle": message.receipt_handle}])
        handles.append(message.receipt_handle)
    queue = sqs.get_queue("churn")
    assert len(queue.deleted_messages) == 50 and handles[-1] in queue.deleted_messages
    queue.delete_message(handles[-1])  # a repeated delete of a recent message still succeeds

    sns = sns_backends[DEFAULT_ACCOUNT_ID][REGION]  # topics are looked up there
    topic = sns.create_topic("bounded-test")
    try:
        ids = [topic.publish(f"event {i}") for i in range(500)]
    finally:
        sns.delete_topic(topic.arn)
    kept = [sent[0] for sent in topic.sent_notifications]
    assert len(kept) <= 2 * moto_patches.KEPT_PUBLISHED and kept == ids[-len(kept):]


def test_filters_match_as_moto_decides() -> None:
    match_filters_quickly()
    from moto.sns.utils import FilterPolicyMatcher

    def matches(policy: dict, **attributes: tuple[str, str]) -> bool:
        return FilterPolicyMatcher(policy, None).matches(
            {k: {"Type": t, "Value": v} for k, (t, v) in attributes.items()}, "")

    types = {"event_type": ["post.created", "post.liked"]}
    assert matches(types, event_type=("String", "post.liked"))
    assert not matches(types, event_type=("String", "post.deleted"))
    assert not matches(types)
    # A JSON array attribute matches when it holds one of the strings (moto's way, kept).
    assert matches(types, event_type=("String.Array", '["x", "post.created"]'))
    assert not matches(types, event_type=("String.Array", '["x"]'))
    both = {**types, "push": ["yes"]}
    assert matches(both, event_type=("String", "post.liked"), push=("String", "yes"))
    assert not matches(both, event_type=("String", "post.liked"))
    assert not matches(both, event_type=("String", "post.liked"), push=("String", "no"))
    assert matches({"n": [{"numeric": [">", 3]}]}, n=("Number", "4"))
    assert matches({"event_type": [{"prefix": "post."}]}, event_type=("String", "post.x"))


def test_responses_serialize_as_moto_does() -> None:
    """The quick attribute picker gives moto's bytes, for both of SQS's protocols, with
    optional members present and missing, binary attributes, and objects that are not dicts."""
    from moto.core.responses import get_service_model
    from moto.core.serialize import XFormedAttributePicker, get_serializer_class

    pick_attributes_quickly()

    class Slow(XFormedAttributePicker):
        __call__ = XFormedAttributePicker.__call__.slow  # type: ignore[attr-defined]

    class Queue:
        def __init__(self) -> None:
            self.attributes = {"VisibilityTimeout": "30", "ApproximateNumberOfMessages": "2"}

    messages = {"Messages": [
        {"MessageId": "m1", "ReceiptHandle": "r1", "MD5OfBody": "d1", "Body": "{}",
         "MessageAttributes": {
             "event_type": {"DataType": "String", "StringValue": "post.created"},
             "raw": {"DataType": "Binary", "BinaryValue": b"\x00\xff"}},
         "MD5OfMessageAttributes": "d2", "Attributes": {"SentTimestamp": "1700000000000"}},
        {"MessageId": "m2", "ReceiptHandle": "r2", "MD5OfBody": "d3", "Body": "b"}]}
    model = get_service_model("sqs")
    cases = (("ReceiveMessage", messages), ("ReceiveMessage", {}),
             ("GetQueueAttributes", Queue()), ("GetQueueUrl", {"QueueUrl": "http://q"}))

    def serialized(picker: XFormedAttributePicker, protocol: str, operation: str,
                   result: object) -> str:
        serializer = get_serializer_class("sqs", protocol)(
            operation_model=model.operation_model(operation), pretty_print=False,
            value_picker=picker)
        return serializer.serialize(result)["body"]

    for protocol in ("json", "query"):
        for case in cases:
            quick = serialized(XFormedAttributePicker(), protocol, *case)
            assert quick
            assert quick == serialized(Slow(), protocol, *case), (protocol, case[0])


def test_receipt_handles_look_as_moto_makes_them() -> None:
    make_receipt_handles_quickly()
    sqs = SQSBackend(REGION, DEFAULT_ACCOUNT_ID)
    sqs.create_queue("handles")
    for _ in range(3):
        sqs.send_message("handles", "x")
    handles = [m.receipt_handle for m in sqs.receive_message("handles", 10, 0, 30)]
    assert len(set(handles)) == 3
    assert all(len(h) == 185 and h.isalpha() and h.islower() for h in handles)
