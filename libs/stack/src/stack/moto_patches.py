"""What the local moto server changes in moto, and why: the same answers, without the costs
that grew with every message (scans per call, exceptions per filter rule, lists that were
never trimmed). Applied once per process by `apply()`; tested in
libs/stack/tests/test_motoserver.py."""

import functools
import threading
import time
from collections.abc import Iterator
from typing import Any

KEPT_HANDLES = 10_000  # receipt handles of deleted messages remembered per queue
KEPT_PUBLISHED = 100  # messages moto keeps per SNS topic for inspection


class RecentHandles(dict[str, None]):
    """The receipt handles of deleted messages, the newest `KEPT_HANDLES` of them: what moto
    keeps as a set (`in`, `update`) and never trims."""

    def update(self, handles: Any = (), /, **_: Any) -> None:  # type: ignore[override]
        for handle in handles:
            self[handle] = None
        while len(self) > KEPT_HANDLES:
            del self[next(iter(self))]


def keep_published_few() -> None:
    """moto appends every message published to an SNS topic to a list it never trims (for
    tests that inspect it); only the newest `KEPT_PUBLISHED` are kept."""
    import moto.sns.models as sns

    publish = sns.Topic.publish
    if getattr(publish, "trimmed", False):
        return

    def publish_and_trim(topic: Any, *args: Any, **kwargs: Any) -> str:
        message_id = publish(topic, *args, **kwargs)
        if len(topic.sent_notifications) > 2 * KEPT_PUBLISHED:
            del topic.sent_notifications[:-KEPT_PUBLISHED]
        return message_id

    publish_and_trim.trimmed = True  # type: ignore[attr-defined]
    sns.Topic.publish = publish_and_trim


def match_filters_quickly() -> None:
    """moto matched a string attribute against a filter's list of strings by trying, for
    each string that is not equal, to parse the attribute as JSON (an exception per rule, per
    subscription, per message). Equal is decided at once, and the parse is tried once; any
    other case is still moto's."""
    import json

    from moto.sns.utils import FilterPolicyMatcher

    field_match = FilterPolicyMatcher._field_match
    if getattr(field_match, "quick", False):
        return

    def quick(field: str, rules: list[Any], body: dict[str, Any],
              attributes_based_check: bool = True) -> bool:
        attribute = body.get(field) if attributes_based_check else None
        value = attribute.get("Value") if isinstance(attribute, dict) else None
        if isinstance(value, str) and rules and all(isinstance(r, str) for r in rules):
            if value in rules:
                return True
            try:
                json.loads(value)
            except ValueError:
                return False  # no rule can match through the parse either
        return field_match(field, rules, body, attributes_based_check)

    quick.quick = True  # type: ignore[attr-defined]
    FilterPolicyMatcher._field_match = staticmethod(quick)


def take_sqs_shortcuts() -> None:
    """moto's SQS hot paths, made cheap without changing what they answer.

    moto keeps a queue's messages in one list and scans it, reading the clock per message,
    on nearly every call: the cost of each send, receive and delete grew with the queue's
    depth (5,000 waiting: 6 ms of moto's CPU per event published to one queue). Here:

    - A send computed all of the queue's attributes to read one of them
      (`ContentBasedDeduplication`): three counts of the queue per message sent. Counts
      asked for while a message is being sent are never read, so they are skipped.
    - Counts and the visible messages are found with one clock read per scan, from
      `time.time()`, not through naive-datetime arithmetic per message; a receive walks the
      visible messages only as far as it hands them out.
    - A long poll re-listed every visible message each time a message arrived anywhere in
      the queue; it now stops at the first visible one.
    - A delete scanned the queue twice per receipt handle and rebuilt the list without the
      queue's lock (a send in between could be lost); a batch of deletes is one scan, under
      the lock, that stops at the last handle found. What each entry answers is still
      decided by moto.
    - For each message handed out, the retention check computed all of the queue's
      attributes (three counts again); the period is one field.
    - Every receipt handle of every message ever deleted was kept (a delete repeated with
      an old handle succeeds): the newest `KEPT_HANDLES` per queue are kept, so memory and
      the periodic snapshot stop growing with the number of messages ever sent.
    """
    import moto.sqs.models as sqs

    if getattr(sqs, "shortcuts_taken", False):
        return
    sqs.shortcuts_taken = True
    sending = threading.local()
    _unix_time = sqs.unix_time

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else _unix_time(dt)

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else _unix_time(dt) * 1000.0

    def ready(queue: Any) -> Iterator[Any]:
        now = time.time() * 1000.0
        return (m for m in queue._messages if m.visible_at < now and m.delayed_until <= now)

    def count(which: str) -> property:
        def counted(queue: Any) -> int:
            if getattr(sending, "active", False):
                return 0
            now = time.time() * 1000.0
            if which == "delayed":
                return sum(1 for m in queue._messages if now < m.delayed_until)
            if which == "not_visible":
                return sum(1 for m in queue._messages if m.visible_at >= now)
            return sum(1 for _ in ready(queue))
        return property(counted)

    send_message = sqs.SQSBackend.send_message

    def send_without_counts(backend: Any, *args: Any, **kwargs: Any) -> Any:
        sending.active = True
        try:
            return send_message(backend, *args, **kwargs)
        finally:
            sending.active = False

    def wait_for_messages(queue: Any, timeout: int) -> None:
        def any_ready() -> bool:
            now = time.time() * 1000.0
            return any(m.visible_at < now and m.delayed_until <= now for m in queue._messages)
        with queue._messages_lock:
            queue._messages_lock.wait_for(any_ready, timeout=timeout)

    def take_out(queue: Any, handles: set[str]) -> None:
        """Remove the messages that ever had one of these receipt handles, as moto does.

        Handles are unique and the oldest messages are received first, so the messages
        holding them as their current handles are near the front: the scan stops once all
        are found. Only when one is not found (an older handle) is the whole queue looked at."""
        with queue._messages_lock:
            if not isinstance(queue.deleted_messages, RecentHandles):
                queue.deleted_messages = RecentHandles(queue.deleted_messages)
            messages, wanted, found = queue._messages, set(handles), []
            for i, m in enumerate(messages):
                if m.receipt_handle in wanted:
                    found.append(i)
                    wanted.discard(m.receipt_handle)
                    if not wanted:
                        break
            if wanted:
                found = [i for i, m in enumerate(messages) if m.receipt_handle in handles
                         or not handles.isdisjoint(m._old_receipt_handles)]
            # A new list, as moto makes: a receive may be walking the old one.
            kept = messages.copy()
            for i in reversed(found):
                queue.pending_messages.discard(kept[i])
                queue.deleted_messages.update(kept[i].all_receipt_handles)
                del kept[i]
            queue._messages = kept

    delete_message = sqs.Queue.delete_message
    delete_message_batch = sqs.SQSBackend.delete_message_batch

    def delete_one(queue: Any, receipt_handle: str) -> None:
        if receipt_handle not in queue.deleted_messages:
            take_out(queue, {receipt_handle})
        delete_message(queue, receipt_handle)  # already deleted: fine; never seen: its error

    def delete_batch(backend: Any, queue_name: str, receipts: list[dict[str, Any]]) -> Any:
        take_out(backend.get_queue(queue_name), {r["ReceiptHandle"] for r in receipts})
        return delete_message_batch(backend, queue_name, receipts)

    def retained(backend: Any, queue_name: str, message: Any) -> bool:
        period = int(backend.get_queue(queue_name).message_retention_period)
        return period + message.sent_timestamp / 1000 > sqs.unix_time()

    sqs.unix_time, sqs.unix_time_millis = unix_time, unix_time_millis
    sqs.Queue.messages = property(ready)
    sqs.Queue.approximate_number_of_messages = count("ready")
    sqs.Queue.approximate_number_of_messages_delayed = count("delayed")
    sqs.Queue.approximate_number_of_messages_not_visible = count("not_visible")
    sqs.Queue.wait_for_messages = wait_for_messages
    sqs.Queue.delete_message = delete_one
    sqs.SQSBackend.send_message = send_without_counts
    sqs.SQSBackend.delete_message_batch = delete_batch
    sqs.SQSBackend.is_message_valid_based_on_retention_period = retained


def pick_attributes_quickly() -> None:
    """moto serializes every response member by trying the member's possible names (the
    model's, aliases, snake_case) on the result object; each name missing from a dict raised
    and caught a KeyError, and the names were worked out again for every member of every
    message (a quarter of the server's CPU in a receive). For a plain dict the names depend
    only on the member and its shape, so they are worked out once, and looked up without an
    exception. Any other object is still moto's way."""
    from moto.core import serialize

    picker = serialize.AttributePicker
    if getattr(picker.__call__, "quick", False):
        return
    slow = picker.__call__
    missing = object()
    # By shape identity; the shape is kept with its names, so that its id cannot be reused.
    names: dict[tuple[Any, str, int], tuple[Any, tuple[str, ...]]] = {}

    def pick(self: Any, context: Any) -> Any:
        obj = context.obj
        if type(obj) is not dict:
            return slow(self, context)
        key = (type(self), context.key, id(context.shape))
        known = names.get(key)
        if known is None:
            known = names[key] = (context.shape, tuple(self.get_possible_keys(context)))
        possible = known[1]
        value = None
        for name in possible:
            found = obj.get(name, missing)
            if found is not missing:
                value = found
                break
        if self.response_transformers:
            key_path = f"{context.key_path}.{context.key}"
            for transform_path, transform in self.response_transformers.items():
                if key_path.endswith(transform_path):
                    return transform(value)
        return value

    pick.quick = True  # type: ignore[attr-defined]
    pick.slow = slow  # type: ignore[attr-defined]
    picker.__call__ = pick


def make_receipt_handles_quickly() -> None:
    """A receipt handle is 185 random lowercase letters: drawn in one call of moto's random
    source (which tests may seed), not one call per letter."""
    import string

    import moto.sqs.models as sqs
    from moto.moto_api._internal import mock_random

    def receipt_handle() -> str:
        return "".join(mock_random.choices(string.ascii_lowercase, k=185))

    sqs.generate_receipt_handle = receipt_handle


def name_once() -> None:
    """moto turns CamelCase names into snake_case character by character, on every call:
    a send to a queue converted the names of all of the queue's attributes to read one of
    them (a third of the server's CPU while SNS fans out). The conversion depends only on
    its argument, so the modules on the hot paths look each name up once."""
    import moto.core.responses as responses
    import moto.core.utils as utils
    import moto.sns.models as sns
    import moto.sqs.models as sqs

    convert = utils.camelcase_to_underscores
    if hasattr(convert, "cache_info"):
        return
    remembered = functools.lru_cache(maxsize=4096)(convert)
    for module in (utils, responses, sns, sqs):
        if getattr(module, "camelcase_to_underscores", None) is convert:
            module.camelcase_to_underscores = remembered  # type: ignore[attr-defined]


def apply() -> None:
    name_once()
    take_sqs_shortcuts()
    keep_published_few()
    match_filters_quickly()
    pick_attributes_quickly()
    make_receipt_handles_quickly()
