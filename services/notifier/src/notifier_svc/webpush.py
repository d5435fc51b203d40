"""Web Push delivery: RFC 8291 message encryption, RFC 8292 VAPID, and an SSRF guard.

A push endpoint is a URL a browser hands us, so it is untrusted input: it is checked once at
subscribe time (`validate_subscription`) and every request is sent without following
redirects. The outcome of a send says what the caller should do next, not just what happened.
"""

import asyncio
import base64
import functools
import ipaddress
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Literal

import aiohttp
import http_ece
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid.jwt import sign as sign_jwt

from chassis.problems import invalid

RECORD_SIZE = 4096
# RFC 8291 §4: a 4,096-byte body leaves 3,993 bytes for the plaintext once the header
# (86 bytes), the tag (16) and the padding delimiter (1) are taken out.
MAX_PLAINTEXT = 3993
MAX_ENDPOINT = 2048
TOKEN_LIFETIME_S = 12 * 3600  # RFC 8292 allows at most 24 h; half leaves room for clock skew
URGENCIES = ("very-low", "low", "normal", "high")
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")  # RFC 8030 §5.4
_BODY_PREVIEW = 200

Resolver = Callable[[str], Iterable[str]]
"""Host name → IP address strings; swapped in tests so they do not depend on DNS."""


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; ValueError on anything else."""
    bare = text.rstrip("=")
    if not _B64URL.fullmatch(text) or len(bare) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class VapidKeys:
    """The application server's P-256 key pair, as configured in settings."""

    private_key: ec.EllipticCurvePrivateKey
    # Signed tokens by (audience, subject): a token serves every push to its push service
    # while more than half its lifetime is left, instead of an ES256 signature per push.
    _tokens: dict[tuple[str, str], tuple[str, float]] = field(
        default_factory=dict, compare=False, repr=False)

    def token(self, audience: str, subject: str) -> str:
        """The `vapid t=` JWT for a push service's origin (RFC 8292 §2)."""
        now = time.time()
        token, expires = self._tokens.get((audience, subject), ("", 0.0))
        if expires - now < TOKEN_LIFETIME_S / 2:
            expires = int(now) + TOKEN_LIFETIME_S
            token = sign_jwt({"aud": audience, "exp": expires, "sub": subject},
                             self.private_key)
            self._tokens[(audience, subject)] = (token, expires)
        return token

    @classmethod
    def load(cls, private_key: str) -> "VapidKeys":
        """From the base64url 32-byte scalar (`web-push generate-vapid-keys`) or a PEM."""
        text = private_key.strip()
        try:
            if text.startswith("-----BEGIN"):
                key = serialization.load_pem_private_key(text.encode(), password=None)
            else:
                scalar = b64url_decode(text)
                if len(scalar) != 32:
                    raise ValueError("expected 32 bytes")
                key = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"VAPID private key is not usable: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("VAPID private key must be a P-256 EC key")
        return cls(key)

    @classmethod
    def generate(cls) -> "VapidKeys":
        """A new key pair, e.g. for the first local start; store `private_key_b64`."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def private_key_b64(self) -> str:
        return b64url_encode(self.private_key.private_numbers().private_value.to_bytes(32, "big"))

    @functools.cached_property
    def public_key_b64(self) -> str:
        """What browsers take as `applicationServerKey` (65-byte uncompressed point)."""
        return b64url_encode(self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))


@dataclass(frozen=True)
class Subscription:
    """The parts of a browser's PushSubscription needed to reach it."""

    endpoint: str
    p256dh: str
    auth: str


def system_resolver(host: str) -> list[str]:
    """All addresses the system resolver gives for `host` (blocking)."""
    return [info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # `is_global` already excludes private, loopback, link-local, reserved, unspecified and
    # shared (CGNAT) space; multicast is listed because some multicast ranges are "global".
    return not address.is_global or address.is_multicast


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:  # forms like 2130706433 or 0x7f.1 that resolvers still read as IPv4
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _check_endpoint(endpoint: str, allow_private: bool, resolve: Resolver) -> None:
    if len(endpoint) > MAX_ENDPOINT:
        raise invalid("endpoint", f"longer than {MAX_ENDPOINT} characters")
    if any(ch <= " " or ch > "~" for ch in endpoint):
        raise invalid("endpoint", "contains whitespace, control or non-ASCII characters")
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:
        raise invalid("endpoint", f"not a URL: {exc}") from exc
    schemes = ("https", "http") if allow_private else ("https",)
    if url.scheme not in schemes:
        raise invalid("endpoint", "must be an https URL")
    if url.userinfo:
        raise invalid("endpoint", "must not carry a user name or password")
    if url.port is not None and not 0 < url.port < 65536:
        raise invalid("endpoint", "port out of range")
    host = url.raw_host.decode("ascii").rstrip(".")  # IDNA-encoded, as DNS will see it
    if not host:
        raise invalid("endpoint", "has no host")
    if allow_private:
        return
    if host == "localhost" or host.endswith(".localhost"):
        raise invalid("endpoint", "must not point at a local host")
    literal = _literal_ip(host)
    try:
        addresses = [literal] if literal is not None else [_literal_ip(a) for a in resolve(host)]
    except OSError as exc:
        raise invalid("endpoint", "host does not resolve") from exc
    if not addresses or any(a is None or _is_internal(a) for a in addresses):
        raise invalid("endpoint", "must not point at a private or reserved address")


def validate_subscription(endpoint: str, p256dh: str, auth: str, *, allow_private: bool,
                          resolve: Resolver = system_resolver) -> None:
    """Refuse (as a Problem naming the field) a subscription we must not or cannot push to.

    `allow_private` is for local development, where the push receiver runs on this machine.
    The default resolver blocks; call this from a worker thread in async code.
    """
    _check_endpoint(endpoint, allow_private, resolve)
    try:
        point = b64url_decode(p256dh)
        if len(point) != 65 or point[0] != 4:
            raise ValueError("expected a 65-byte uncompressed point")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise invalid("keys.p256dh", f"not a P-256 public key: {exc}") from exc
    try:
        secret = b64url_decode(auth)
    except ValueError as exc:
        raise invalid("keys.auth", "not base64url") from exc
    if len(secret) != 16:
        raise invalid("keys.auth", "must be 16 bytes")


def _origin(url: httpx.URL) -> str:
    host = url.raw_host.decode("ascii")
    host = f"[{host}]" if ":" in host else host
    return f"{url.scheme}://{host}" + (f":{url.port}" if url.port is not None else "")


def build_request(subscription: Subscription | Mapping[str, str], payload: bytes, *,
                  vapid: VapidKeys, subject: str, ttl_s: int, urgency: str = "normal",
                  topic: str | None = None) -> tuple[str, dict[str, str], bytes]:
    """Encrypt `payload` for one subscription and sign for its push service."""
    if isinstance(subscription, Mapping):
        subscription = Subscription(subscription["endpoint"], subscription["p256dh"],
                                    subscription["auth"])
    if len(payload) > MAX_PLAINTEXT:
        raise ValueError(f"payload is {len(payload)} bytes; at most {MAX_PLAINTEXT} fit")
    if urgency not in URGENCIES:
        raise ValueError(f"urgency must be one of {URGENCIES}")
    if topic is not None and not _TOPIC.fullmatch(topic):
        raise ValueError("topic must be 1-32 base64url characters")
    if ttl_s < 0:
        raise ValueError("ttl_s must not be negative")
    if not subject.startswith(("mailto:", "https://")):
        raise ValueError("subject must be a mailto: or https: URL")
    body = http_ece.encrypt(
        payload, salt=os.urandom(16), private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=b64url_decode(subscription.p256dh), auth_secret=b64url_decode(subscription.auth),
        rs=RECORD_SIZE, version="aes128gcm")
    token = vapid.token(_origin(httpx.URL(subscription.endpoint)), subject)
    headers = {
        "Authorization": f"vapid t={token}, k={vapid.public_key_b64}",
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "TTL": str(ttl_s),
        "Urgency": urgency,
    }
    if topic is not None:
        headers["Topic"] = topic
    return subscription.endpoint, headers, body


@dataclass(frozen=True)
class Outcome:
    """What a push attempt means for the caller: keep, drop the subscription, or retry."""

    status: int | None
    kind: Literal["delivered", "gone", "retry", "failed"]
    retry_after_s: float | None
    reason: str


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo else None


async def send(http: aiohttp.ClientSession, subscription: Subscription | Mapping[str, str],
               payload: bytes, *,
               vapid: VapidKeys, subject: str, ttl_s: int, urgency: str = "normal",
               topic: str | None = None, timeout_s: float = 10.0) -> Outcome:
    """Push one message and classify the push service's answer.

    aiohttp, not httpx: at hundreds of pushes a second httpx's connection pool, which checks
    every pooled connection on each request, took a third of the notifier's CPU."""
    url, headers, body = build_request(subscription, payload, vapid=vapid, subject=subject,
                                       ttl_s=ttl_s, urgency=urgency, topic=topic)
    try:
        # The overall deadline also bounds a receiver that answers one byte at a time.
        async with asyncio.timeout(timeout_s), http.post(
                url, headers=headers, data=body, allow_redirects=False) as response:
            preview = b""
            while len(preview) < _BODY_PREVIEW:
                chunk = await response.content.read(_BODY_PREVIEW - len(preview))
                if not chunk:
                    break
                preview += chunk
    except TimeoutError:
        return Outcome(None, "retry", None, f"no answer within {timeout_s} s")
    except aiohttp.InvalidURL as exc:
        return Outcome(None, "failed", None, f"unsupported URL: {exc}")
    except aiohttp.ClientError as exc:
        return Outcome(None, "retry", None, f"connection failed: {type(exc).__name__} {exc}")
    status = response.status
    reason = f"{status} {preview[:_BODY_PREVIEW].decode('utf-8', 'replace')}".strip()
    if 200 <= status < 300:
        return Outcome(status, "delivered", None, reason)
    if status in (404, 410):
        return Outcome(status, "gone", None, reason)
    if status == 429 or status >= 500:
        return Outcome(status, "retry", parse_retry_after(response.headers.get("Retry-After")),
                       reason)
    return Outcome(status, "failed", None, reason)
