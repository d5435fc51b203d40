"""The Web Push (VAPID) key pair of a local stack: made on the first start, kept after, so
that browsers' subscriptions stay valid across restarts. On AWS it comes from a secret."""

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def kept_vapid_keys(path: Path) -> tuple[str, str]:
    """(private, public): the raw P-256 scalar and the uncompressed point, base64url."""
    if path.exists():
        keys = json.loads(path.read_text())
        return keys["private"], keys["public"]
    key = ec.generate_private_key(ec.SECP256R1())
    private = _b64url(key.private_numbers().private_value.to_bytes(32, "big"))
    public = _b64url(key.public_key().public_bytes(serialization.Encoding.X962,
                                                   serialization.PublicFormat.UncompressedPoint))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"private": private, "public": public}))
    path.chmod(0o600)
    return private, public
