"""A moto server whose SNS, SQS, S3 and Cognito state survives a restart, kept in one file.

moto keeps everything in memory, in one backend object per service, account and region.
Those objects pickle once three kinds of member are reduced by hand: thread locks and
conditions (SQS queues, S3 keys) are recreated empty, and the joserfc RSA key each Cognito
pool signs with is rebuilt from its JWK. A snapshot is taken while requests run, so a dict
that changes under the pickler makes that attempt fail; the next attempt (or the next
period) succeeds. The final snapshot is taken after the listener stopped, so it is exact.
"""

import argparse
import io
import logging
import os
import pickle
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import moto
from joserfc import jwk
from moto.backends import get_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress.server import create_server

PERSISTED = ("cognito-idp", "sns", "sqs", "s3")
# Each long poll (ReceiveMessage waiting up to 20 s) holds a thread: one per consumer loop of
# the whole stack, and room for the calls beside them.
THREADS = 96
_LOCKS = (type(threading.Lock()), type(threading.RLock()))

log = logging.getLogger("stack.motoserver")


class _StatePickler(pickle.Pickler):
    """Pickles moto backends, recreating what cannot be copied (locks) or rebuilding it (keys)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _LOCKS):
            return (threading.RLock if isinstance(obj, _LOCKS[1]) else threading.Lock), ()
        if isinstance(obj, threading.Condition):
            return threading.Condition, ()
        if isinstance(obj, jwk.RSAKey):
            return jwk.RSAKey.import_key, (dict(obj.as_dict(private=obj.is_private)),)
        return NotImplemented


def snapshot(attempts: int = 20) -> bytes:
    """The persisted backends as bytes, retrying while concurrent requests change them."""
    for attempt in range(attempts):
        state = {name: {account: dict(regions) for account, regions in get_backend(name).items()}
                 for name in PERSISTED}
        buffer = io.BytesIO()
        try:
            _StatePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(
                {"moto": moto.__version__, "backends": state})
            return buffer.getvalue()
        except RuntimeError:
            time.sleep(0.01 * (attempt + 1))
    raise RuntimeError("moto state kept changing while it was being saved")


def restore(data: bytes) -> None:
    """Put pickled backends in place of the (empty) ones of this process."""
    saved = pickle.loads(data)
    if saved.get("moto") != moto.__version__:
        log.warning("state was saved by moto %s, this is %s", saved.get("moto"), moto.__version__)
    for name, accounts in saved["backends"].items():
        backends = get_backend(name)
        for account, regions in accounts.items():
            for region, backend in regions.items():
                backends[account][region] = backend


def save(path: Path) -> None:
    """Write a snapshot atomically: a reader sees the old file or the new one, never half."""
    data = snapshot()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> None:
    """Restore from the state file if there is one; an unreadable file is kept aside, not lost."""
    if not path.exists():
        return
    try:
        restore(path.read_bytes())
        log.info("restored moto state from %s", path)
    except Exception:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        path.rename(aside)
        log.exception("could not restore moto state; moved it to %s and started empty", aside)


class _ChangeTracker:
    """WSGI middleware noting that requests came in, so idle periods write nothing."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.changed = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            return self.app(environ, start_response)
        finally:
            # Set once moto has answered, so the next snapshot includes this request's change.
            self.changed.set()


class _ScopedDispatcher(DomainDispatcherApplication):
    """moto's server works out each request's service by scanning its list of modules under
    one lock, on every request. A signed request names its region and service in the
    credential scope of its Authorization header: the app found for a scope is remembered.
    Unsigned requests (presigned uploads, the JWKS) take moto's own way."""

    _SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/([^/,]+)/([^/,]+)/aws4_request")

    def __init__(self) -> None:
        super().__init__(create_backend_app)
        self._by_scope: dict[tuple[str, str], Any] = {}

    def get_application(self, environ: dict[str, Any]) -> Any:
        match = self._SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        if match is None or environ.get("PATH_INFO", "").startswith("/moto-api"):
            return super().get_application(environ)
        app = self._by_scope.get(match.groups())
        if app is None:
            app = self._by_scope[match.groups()] = super().get_application(environ)
        return app


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
      `time.time()`, not through naive-datetime arithmetic per message.
    - A long poll re-listed every visible message each time a message arrived anywhere in
      the queue; it now stops at the first visible one.
    - A delete scanned the queue twice per receipt handle and rebuilt the list without the
      queue's lock (a send in between could be lost); a batch of deletes is one scan, under
      the lock. What each entry answers is still decided by moto.
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

    def ready(queue: Any) -> list[Any]:
        now = time.time() * 1000.0
        return [m for m in queue._messages if m.visible_at < now and m.delayed_until <= now]

    def count(which: str) -> property:
        def counted(queue: Any) -> int:
            if getattr(sending, "active", False):
                return 0
            now = time.time() * 1000.0
            if which == "delayed":
                return sum(1 for m in queue._messages if now < m.delayed_until)
            if which == "not_visible":
                return sum(1 for m in queue._messages if m.visible_at >= now)
            return len(ready(queue))
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
        """Remove the messages that ever had one of these receipt handles, as moto does."""
        with queue._messages_lock:
            if not isinstance(queue.deleted_messages, RecentHandles):
                queue.deleted_messages = RecentHandles(queue.deleted_messages)
            kept = []
            for m in queue._messages:
                if m.receipt_handle in handles or not handles.isdisjoint(m._old_receipt_handles):
                    queue.pending_messages.discard(m)
                    queue.deleted_messages.update(m.all_receipt_handles)
                else:
                    kept.append(m)
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


def serve(host: str, port: int, state: Path, interval_s: float,
          port_file: Path | None = None) -> None:
    """Serve until SIGTERM/SIGINT, saving every interval when requests came, and on the way out."""
    state.parent.mkdir(parents=True, exist_ok=True)
    take_sqs_shortcuts()
    keep_published_few()
    match_filters_quickly()
    load(state)
    tracker = _ChangeTracker(_ScopedDispatcher())
    # Not moto's own server (werkzeug's): that closes the connection after every response,
    # so each AWS call paid for a new connection and a new thread (a third of moto's CPU).
    server = create_server(tracker, host=host, port=port, threads=THREADS, ident="moto",
                           connection_limit=4096, asyncore_use_poll=True,
                           channel_timeout=300)
    threading.Thread(target=server.run, name="moto", daemon=True).start()
    if port_file:
        # Port 0 plus this file: no window in which another process can take a chosen port.
        tmp = port_file.with_name(f".{port_file.name}.tmp")
        tmp.write_text(str(server.effective_port))
        tmp.replace(port_file)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    log.info("moto %s listening on %s:%s, state in %s", moto.__version__, host,
             server.effective_port, state)
    while not stopping.wait(interval_s):
        if tracker.changed.is_set():
            tracker.changed.clear()
            try:
                save(state)
            except Exception:
                log.exception("periodic save failed; will retry")
    server.close()
    save(state)
    log.info("saved moto state to %s", state)


def main(argv: list[str] | None = None) -> None:
    """`python -m stack.motoserver --port P --state FILE`"""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--state", type=Path, required=True, help="file the state is kept in")
    parser.add_argument("--save-interval", type=float, default=5.0, help="seconds")
    parser.add_argument("--port-file", type=Path, help="write the port listened on here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("waitress").setLevel(logging.WARNING)
    serve(args.host, args.port, args.state, args.save_interval, args.port_file)


if __name__ == "__main__":
    main()
