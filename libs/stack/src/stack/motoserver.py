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

from chassis import collector

from . import moto_patches
from .moto_patches import RecentHandles  # noqa: F401 (states pickled before it moved)

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


def serve(host: str, port: int, state: Path, interval_s: float,
          port_file: Path | None = None) -> None:
    """Serve until SIGTERM/SIGINT, saving every interval when requests came, and on the way out."""
    state.parent.mkdir(parents=True, exist_ok=True)
    moto_patches.apply()
    load(state)
    collector.settle()  # moto's messages are objects by the hundred thousand
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
    parser.add_argument("--nice", type=int, default=0,
                        help="lower this process's CPU priority by this much (before any "
                             "thread starts, so that every thread has it)")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("waitress").setLevel(logging.WARNING)
    serve(args.host, args.port, args.state, args.save_interval, args.port_file)


if __name__ == "__main__":
    main()
