"""Web Push against a real local receiver that decrypts like a browser and verifies VAPID.

The receiver is a raw HTTP/1.1 server on asyncio streams, so what it records is exactly what
went over the socket.
"""

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import http_ece
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from sqlalchemy import delete

from chassis.problems import Problem
from chassis.testing import sqlite_plan
from notifier_svc.models import metadata, push_jobs
from notifier_svc.webpush import (
    MAX_PLAINTEXT,
    TOKEN_LIFETIME_S,
    Subscription,
    VapidKeys,
    b64url_decode,
    b64url_encode,
    build_request,
    send,
    validate_subscription,
)

SUBJECT = "mailto:ops@example.com"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers every request with `status`/`headers`, or never when `hang` is set."""

    port: int = 0
    status: int = 201
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    requests: list[Recorded] = field(default_factory=list)
    tasks: set[asyncio.Task] = field(default_factory=set)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())
        try:
            method, path, _ = (await reader.readline()).decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode().rstrip("\r\n")):
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Recorded(method, path, headers, body))
            if self.hang:
                await asyncio.Event().wait()
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            reply = f"status {self.status}".encode()
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(reply)}\r\n"
                         f"Connection: close\r\n{extra}\r\n".encode() + reply)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    try:
        yield rec
    finally:
        server.close()
        for task in rec.tasks:
            task.cancel()
        await asyncio.gather(*rec.tasks, return_exceptions=True)
        await server.wait_closed()


@dataclass
class Browser:
    """A user agent's side of a subscription: its key pair and auth secret."""

    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @classmethod
    def new(cls) -> "Browser":
        return cls(ec.generate_private_key(ec.SECP256R1()), os.urandom(16))

    @property
    def p256dh(self) -> str:
        return b64url_encode(self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    def subscription(self, endpoint: str) -> Subscription:
        return Subscription(endpoint, self.p256dh, b64url_encode(self.auth))

    def decrypt(self, body: bytes) -> bytes:
        return http_ece.decrypt(body, private_key=self.private_key, auth_secret=self.auth,
                                version="aes128gcm")


def verified_claims(authorization: str) -> tuple[dict, str]:
    """Check the ES256 signature with the key in `k=`; return the claims and that key."""
    scheme, params = authorization.split(" ", 1)
    assert scheme == "vapid"
    parts = dict(p.strip().split("=", 1) for p in params.split(","))
    header_b64, claims_b64, sig_b64 = parts["t"].split(".")
    assert json.loads(b64url_decode(header_b64))["alg"] == "ES256"
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                          b64url_decode(parts["k"]))
    sig = b64url_decode(sig_b64)
    public.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                       int.from_bytes(sig[32:], "big")),
                  f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(b64url_decode(claims_b64)), parts["k"]


async def push(receiver: Receiver, *, timeout_s: float = 5.0, payload: bytes = b"hi"):
    sub = Browser.new().subscription(f"{receiver.origin}/push/abc")
    async with aiohttp.ClientSession() as http:
        return await send(http, sub, payload, vapid=VapidKeys.generate(), subject=SUBJECT,
                          ttl_s=60, timeout_s=timeout_s)


async def test_a_push_decrypts_to_the_payload_and_carries_a_valid_vapid_token(receiver):
    browser, vapid = Browser.new(), VapidKeys.generate()
    payload = json.dumps({"title": "New follower", "body": "ada followed you"}).encode()
    async with aiohttp.ClientSession() as http:
        outcome = await send(http, browser.subscription(f"{receiver.origin}/push/abc"),
                             payload, vapid=vapid, subject=SUBJECT, ttl_s=3600,
                             urgency="high", topic="follows")
    assert (outcome.kind, outcome.status) == ("delivered", 201)
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/push/abc")
    assert browser.decrypt(request.body) == payload
    assert request.headers["content-encoding"] == "aes128gcm"
    assert request.headers["content-type"] == "application/octet-stream"
    assert (request.headers["ttl"], request.headers["urgency"]) == ("3600", "high")
    assert request.headers["topic"] == "follows"
    claims, key = verified_claims(request.headers["authorization"])
    assert key == vapid.public_key_b64
    assert claims["aud"] == receiver.origin
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600
    assert claims["sub"] == SUBJECT


def test_a_vapid_token_serves_its_push_service_until_half_its_lifetime_is_left(monkeypatch):
    vapid = VapidKeys.generate()

    def token(endpoint: str) -> str:
        sub = Browser.new().subscription(endpoint)
        return build_request(sub, b"x", vapid=vapid, subject=SUBJECT, ttl_s=0)[1][
            "Authorization"]

    first = token("https://push.example.com/a")
    assert token("https://push.example.com/b") == first  # one origin, one token
    assert token("https://push.other.example/a") != first
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + TOKEN_LIFETIME_S / 2 + 1)
    renewed = token("https://push.example.com/a")
    assert renewed != first
    assert verified_claims(renewed)[0]["exp"] > now + TOKEN_LIFETIME_S


def test_each_message_gets_a_fresh_salt_and_ephemeral_key():
    sub = Browser.new().subscription("https://push.example.com/x")
    bodies = [build_request(sub, b"same", vapid=VapidKeys.generate(), subject=SUBJECT,
                            ttl_s=0)[2] for _ in range(2)]
    assert bodies[0][:16] != bodies[1][:16]  # salt
    assert bodies[0][21:86] != bodies[1][21:86]  # sender's public key (keyid)
    assert int.from_bytes(bodies[0][16:20], "big") == 4096  # record size


async def test_a_subscription_may_be_given_as_a_mapping(receiver):
    browser = Browser.new()
    sub = {"endpoint": f"{receiver.origin}/m", "p256dh": browser.p256dh,
           "auth": b64url_encode(browser.auth)}
    async with aiohttp.ClientSession() as http:
        outcome = await send(http, sub, b"mapped", vapid=VapidKeys.generate(),
                             subject="https://asyncsns.dev/contact", ttl_s=0)
    assert outcome.kind == "delivered"
    assert browser.decrypt(receiver.requests[0].body) == b"mapped"


def test_a_payload_too_large_for_one_4096_byte_message_is_refused():
    browser = Browser.new()
    sub = browser.subscription("https://push.example.com:8443/x")
    url, headers, body = build_request(sub, b"x" * MAX_PLAINTEXT, vapid=VapidKeys.generate(),
                                       subject=SUBJECT, ttl_s=0)
    assert len(body) == 4096 and browser.decrypt(body) == b"x" * MAX_PLAINTEXT
    claims, _ = verified_claims(headers["Authorization"])
    assert claims["aud"] == "https://push.example.com:8443"
    with pytest.raises(ValueError, match="payload"):
        build_request(sub, b"x" * (MAX_PLAINTEXT + 1), vapid=VapidKeys.generate(),
                      subject=SUBJECT, ttl_s=0)


@pytest.mark.parametrize("bad", [{"urgency": "urgent"}, {"topic": "has space"},
                                 {"subject": "ops@example.com"}, {"ttl_s": -1}])
def test_bad_push_options_are_refused(bad):
    options = {"vapid": VapidKeys.generate(), "subject": SUBJECT, "ttl_s": 0, **bad}
    with pytest.raises(ValueError):
        build_request(Browser.new().subscription("https://push.example.com/x"), b"", **options)


@pytest.mark.parametrize(("status", "headers", "kind", "retry_after"), [
    (201, {}, "delivered", None),
    (410, {}, "gone", None),
    (404, {}, "gone", None),
    (500, {}, "retry", None),
    (503, {"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"}, "retry", "future"),
    (429, {"Retry-After": "7"}, "retry", 7.0),
    (400, {}, "failed", None),
    (413, {}, "failed", None),
    (301, {"Location": "http://169.254.169.254/"}, "failed", None),
])
async def test_the_push_service_answer_decides_the_outcome(receiver, status, headers, kind,
                                                           retry_after):
    receiver.status, receiver.headers = status, headers
    outcome = await push(receiver)
    assert (outcome.status, outcome.kind) == (status, kind)
    assert len(receiver.requests) == 1  # a redirect is not followed
    if retry_after == "future":
        assert outcome.retry_after_s > 3600
    else:
        assert outcome.retry_after_s == retry_after
    assert outcome.reason.startswith(f"{status} status {status}")


async def test_a_receiver_that_never_answers_is_retried_after_the_timeout(receiver):
    receiver.hang = True
    started = time.monotonic()
    outcome = await push(receiver, timeout_s=0.5)
    assert (outcome.status, outcome.kind) == (None, "retry")
    assert time.monotonic() - started < 3


async def test_a_closed_port_is_retried():
    async with aiohttp.ClientSession() as http:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        outcome = await send(http, Browser.new().subscription(f"http://127.0.0.1:{port}/x"),
                             b"hi", vapid=VapidKeys.generate(), subject=SUBJECT, ttl_s=0)
    assert (outcome.kind, outcome.status) == ("retry", None)


# validate_subscription ----------------------------------------------------------------

PUBLIC_DNS = {"fcm.googleapis.com": ["142.250.74.106", "2a00:1450:4001:82a::200a"],
              "rebind.example.com": ["93.184.216.34", "10.1.2.3"],
              "metadata.example.com": ["::ffff:169.254.169.254"]}


def fake_resolver(host: str) -> list[str]:
    if host not in PUBLIC_DNS:
        raise OSError(f"unknown host {host}")
    return PUBLIC_DNS[host]


def validate(endpoint: str, *, p256dh: str | None = None, auth: str | None = None,
             allow_private: bool = False) -> None:
    browser = Browser.new()
    validate_subscription(endpoint, browser.p256dh if p256dh is None else p256dh,
                          b64url_encode(browser.auth) if auth is None else auth,
                          allow_private=allow_private, resolve=fake_resolver)


def refused_field(endpoint: str = "https://fcm.googleapis.com/fcm/send/x", **kwargs) -> str:
    with pytest.raises(Problem) as caught:
        validate(endpoint, **kwargs)
    assert caught.value.status == 422
    return caught.value.extra["errors"][0]["field"]


def test_a_public_https_endpoint_is_accepted():
    validate("https://fcm.googleapis.com/fcm/send/abc:def")


@pytest.mark.parametrize("endpoint", [
    "https://127.0.0.1/x", "https://10.0.0.5/x", "https://[::1]/x",
    "https://[::ffff:127.0.0.1]/x", "https://169.254.169.254/latest", "https://localhost/x",
    "https://api.localhost/x", "https://2130706433/x", "https://0.0.0.0/x",
    "https://100.64.0.1/x", "https://224.0.0.1/x", "https://[fe80::1]/x",
    "https://[fd00::1]/x",
])
def test_internal_addresses_are_refused_unless_private_is_allowed(endpoint):
    assert refused_field(endpoint) == "endpoint"
    validate(endpoint, allow_private=True)


@pytest.mark.parametrize("endpoint", ["https://rebind.example.com/x",
                                      "https://metadata.example.com/x",
                                      "https://nowhere.example.com/x"])
def test_a_name_resolving_to_any_internal_address_or_nowhere_is_refused(endpoint):
    assert refused_field(endpoint) == "endpoint"


@pytest.mark.parametrize("endpoint", [
    "http://fcm.googleapis.com/x", "ftp://fcm.googleapis.com/x", "not a url",
    "https://user:pw@fcm.googleapis.com/x", "https:///x",
    "https://fcm.googleapis.com/" + "a" * 2048, "https://fcm.googleapis.com:99999/x",
    "https://fcm.googleapis.com/x\n",
])
def test_malformed_endpoints_are_refused(endpoint):
    assert refused_field(endpoint) == "endpoint"


def test_plain_http_is_allowed_only_for_private_development():
    validate("http://127.0.0.1:8080/push", allow_private=True)


def _off_curve_point() -> str:
    x = int.from_bytes(b64url_decode(Browser.new().p256dh)[1:33], "big")
    return b64url_encode(b"\x04" + x.to_bytes(32, "big") + (1).to_bytes(32, "big"))


@pytest.mark.parametrize("p256dh", [
    b64url_encode(b"\x04" + b"\x01" * 63),  # too short
    _off_curve_point(),
    "not*base64url!",
    b64url_encode(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)),
])
def test_a_malformed_p256dh_is_refused(p256dh):
    assert refused_field(p256dh=p256dh) == "keys.p256dh"


@pytest.mark.parametrize("auth", [b64url_encode(os.urandom(15)), b64url_encode(os.urandom(17)),
                                  "%%%%", b64url_encode(os.urandom(16)) + "\n"])
def test_an_auth_secret_that_is_not_16_bytes_is_refused(auth):
    assert refused_field(auth=auth) == "keys.auth"


def test_padded_base64url_keys_are_accepted():
    browser = Browser.new()
    padded = base64.urlsafe_b64encode(browser.auth).decode()
    validate("https://fcm.googleapis.com/x", p256dh=browser.p256dh + "=", auth=padded)


# VapidKeys --------------------------------------------------------------------------

def test_generated_keys_load_back_from_their_printed_strings():
    keys = VapidKeys.generate()
    loaded = VapidKeys.load(keys.private_key_b64)
    assert loaded.public_key_b64 == keys.public_key_b64
    assert len(b64url_decode(keys.public_key_b64)) == 65
    assert len(b64url_decode(keys.private_key_b64)) == 32


def test_a_pem_private_key_is_accepted():
    keys = VapidKeys.generate()
    pem = keys.private_key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode()
    assert VapidKeys.load(pem).public_key_b64 == keys.public_key_b64


@pytest.mark.parametrize("text", ["", "short", b64url_encode(b"\x00" * 32),
                                  "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----"])
def test_an_unusable_private_key_is_refused(text):
    with pytest.raises(ValueError):
        VapidKeys.load(text)


def test_keys_from_the_web_push_tool_format_load():
    scalar = (12345678901234567890).to_bytes(32, "big")
    keys = VapidKeys.load(b64url_encode(scalar))
    assert keys.private_key_b64 == b64url_encode(scalar)


def test_a_devices_jobs_are_found_by_key_when_it_goes():
    steps = sqlite_plan(metadata, delete(push_jobs).where(push_jobs.c.subscription_id == "s"))
    assert steps == ["SEARCH push_jobs USING INDEX ix_push_jobs_subscription "
                     "(subscription_id=?)"], steps
