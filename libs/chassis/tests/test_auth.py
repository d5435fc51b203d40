"""Only a valid Cognito access token of our pool and client gets through; every forgery is a 401."""

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter
from jose import jwk, jwt

from chassis.auth import CurrentUser
from chassis.testing import assert_problem

router = APIRouter()


@router.get("/me")
async def me(user: CurrentUser) -> dict[str, str]:
    """Who the token says the caller is."""
    return {"sub": user.id, "username": user.username}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict, claims: dict) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


@pytest.fixture
def access_claims(cognito):
    """The claims of a real access token of the pool, fresh for an hour."""
    now = int(time.time())
    claims = jwt.get_unverified_claims(cognito.tokens("mallory")["AccessToken"])
    return {**claims, "iat": now, "exp": now + 3600}


@pytest.fixture
def forge(moto_signing_key):
    """Sign claims with moto's private key, as moto itself would (kid "dummy")."""

    key = jwk.construct(moto_signing_key, "RS256")

    def sign(claims: dict, *, kid: str = "dummy") -> str:
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    return sign


def _hs256_with_public_key(claims: dict, moto_signing_key: dict) -> str:
    """The algorithm-confusion attack: HMAC keyed with the RSA public key's PEM."""
    public = {k: moto_signing_key[k] for k in ("kty", "n", "e")}
    pem = jwk.construct(public, "RS256").to_pem()
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT", "kid": "dummy"}, claims)
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _bad_tokens(cognito, access_claims, forge, moto_signing_key) -> dict[str, tuple[str, str]]:
    """Each abuse, with the reason the verifier must give for refusing it."""
    later = int(time.time()) + 3600
    unsigned = _unsigned({"alg": "none", "typ": "JWT", "kid": "dummy"}, access_claims) + "."
    return {
        "alg none": (unsigned, "algorithm not accepted"),
        "HS256 keyed with the public key": (
            _hs256_with_public_key(access_claims, moto_signing_key), "algorithm not accepted"),
        "wrong issuer": (forge({**access_claims, "iss": "https://cognito-idp.example/evil"}),
                         "Invalid issuer"),
        "wrong client_id": (forge({**access_claims, "client_id": "someone-elses-client"}),
                            "another client"),
        "ID token": (cognito.tokens("mallory")["IdToken"], "not an access token"),
        "expired": (forge({**access_claims, "iat": later - 9000, "exp": int(time.time()) - 60}),
                    "expired"),
        "not yet valid": (forge({**access_claims, "nbf": later}), "not yet valid"),
        "unknown kid": (forge(access_claims, kid="rotated-away"), "unknown signing key"),
        "garbage": ("this-is-not-a-jwt", "malformed"),
        "250 KB": (forge({**access_claims, "padding": "x" * 250_000}), "too large"),
    }


async def test_every_forged_or_misused_token_is_refused_with_a_problem(
        serve, cognito, access_claims, forge, moto_signing_key):
    bad = _bad_tokens(cognito, access_claims, forge, moto_signing_key)
    reasons = {}
    async with serve(router) as client:
        for name, (token, _) in bad.items():
            response = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
            reasons[name] = assert_problem(response, 401)["detail"]
            assert response.headers["www-authenticate"].startswith("Bearer"), name
    assert {name: reason for name, (_, reason) in bad.items() if reason not in reasons[name]} == {}


async def test_a_request_without_a_bearer_token_is_refused(serve):
    async with serve(router) as client:
        missing = await client.get("/me")
        basic = await client.get("/me", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert assert_problem(missing, 401)["detail"] == "missing bearer token"
    assert "Bearer" in assert_problem(basic, 401)["detail"]


async def test_a_valid_access_token_names_its_user(serve, cognito):
    token = cognito.tokens("alice")["AccessToken"]
    async with serve(router) as client:
        response = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json() == {"sub": jwt.get_unverified_claims(token)["sub"],
                               "username": "alice"}


async def test_a_token_signed_with_the_pool_key_and_right_claims_is_accepted(
        serve, access_claims, forge):
    """Guards the test above: the forging helper makes tokens the service does accept."""
    async with serve(router) as client:
        response = await client.get(
            "/me", headers={"Authorization": f"Bearer {forge(access_claims)}"})
    assert response.status_code == 200, response.text
    assert response.json()["sub"] == access_claims["sub"]


class _JWKSServer:
    """A real HTTP server publishing one RSA key set, counting the requests it gets."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = self.private.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        self.key = jwk.construct(pem.decode(), "RS256")
        public = self.key.public_key().to_dict()
        body = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig"}]}).encode()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def sign(self, claims: dict, kid: str) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def jwks_server():
    server = _JWKSServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


async def test_a_burst_of_unknown_kids_does_not_hammer_the_jwks_url(serve, jwks_server):
    issuer, client_id = "https://issuer.test/pool", "client-x"
    now = int(time.time())
    claims = {"sub": "u-1", "username": "u1", "iss": issuer, "client_id": client_id,
              "token_use": "access", "iat": now, "exp": now + 600}
    unknown = [jwks_server.sign(claims, kid=f"unknown-{i}") for i in range(200)]
    async with serve(router, cognito_jwks_url=jwks_server.url, cognito_issuer=issuer,
                     cognito_client_id=client_id, jwks_min_refresh_interval_s=60) as client:
        responses = await asyncio.gather(*(
            client.get("/me", headers={"Authorization": f"Bearer {token}"}) for token in unknown))
        valid = await client.get(
            "/me", headers={"Authorization": f"Bearer {jwks_server.sign(claims, kid='k1')}"})
    assert [r.status_code for r in responses] == [401] * 200
    assert valid.status_code == 200, valid.text
    assert 1 <= jwks_server.requests <= 2
