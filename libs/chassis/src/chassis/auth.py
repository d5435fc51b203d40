"""Cognito access-token verification: RS256 only, keys by `kid` from a cached JWKS."""

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request
from jose import jwk, jwt
from jose.exceptions import JOSEError

from .problems import unauthorized

MAX_TOKEN_BYTES = 8192
ALGORITHMS = ["RS256"]


@dataclass(frozen=True, slots=True)
class User:
    """The caller, as the access token names them."""

    id: str
    username: str
    token: str


class JWKSCache:
    """Public keys by `kid`; an unknown `kid` refreshes at most once per interval."""

    def __init__(self, url: str, *, min_refresh_interval_s: float, http: httpx.AsyncClient) -> None:
        self._url = url
        self._interval = min_refresh_interval_s
        self._http = http
        self._keys: dict[str, Any] = {}
        self._last_fetch = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> Any | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and time.monotonic() - self._last_fetch >= self._interval:
                await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._last_fetch = time.monotonic()
        self.fetches += 1
        try:
            response = await self._http.get(self._url, timeout=5.0)
            response.raise_for_status()
            keys = response.json().get("keys", [])
        except (httpx.HTTPError, ValueError):
            return
        fresh = {}
        for entry in keys:
            rsa = entry.get("kty") == "RSA" and entry.get("alg", "RS256") == "RS256"
            if rsa and entry.get("kid"):
                fresh[entry["kid"]] = jwk.construct(entry, "RS256")
        if fresh:
            self._keys = fresh


class TokenVerifier:
    """Checks signature, `iss`, `exp`, `nbf`, `token_use` and `client_id` of an access token."""

    def __init__(self, jwks: JWKSCache, *, issuer: str, client_id: str, cache_size: int = 10_000):
        self._jwks = jwks
        self._issuer = issuer
        self._client_id = client_id
        self._verified: OrderedDict[str, tuple[User, float]] = OrderedDict()
        self._cache_size = cache_size

    async def verify(self, token: str) -> User:
        cached = self._verified.get(token)
        if cached is not None:
            user, exp = cached
            if time.time() < exp:
                return user
            del self._verified[token]
        if len(token) > MAX_TOKEN_BYTES:
            raise unauthorized("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError as exc:
            raise unauthorized("malformed token") from exc
        if header.get("alg") not in ALGORITHMS:
            raise unauthorized("token algorithm not accepted")
        kid = header.get("kid")
        key = await self._jwks.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise unauthorized("unknown signing key")
        try:
            claims = jwt.decode(
                token, key, algorithms=ALGORITHMS, issuer=self._issuer,
                options={"verify_aud": False, "require_exp": True, "require_iss": True},
            )
        except JOSEError as exc:
            raise unauthorized(f"invalid token: {exc}") from exc
        if claims.get("token_use") != "access":
            raise unauthorized("not an access token")
        if claims.get("client_id") != self._client_id:
            raise unauthorized("token issued for another client")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise unauthorized("token has no subject")
        user = User(id=sub, username=str(claims.get("username", "")), token=token)
        self._remember(token, user, float(claims["exp"]))
        return user

    def _remember(self, token: str, user: User, exp: float) -> None:
        self._verified[token] = (user, exp)
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise unauthorized("missing bearer token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("authorization must be 'Bearer <access_token>'")
    return token.strip()


async def current_user(request: Request) -> User:
    """The authenticated caller; 401 problem+json otherwise."""
    verifier: TokenVerifier = request.app.state.verifier
    return await verifier.verify(bearer_token(request))


CurrentUser = Annotated[User, Depends(current_user)]
