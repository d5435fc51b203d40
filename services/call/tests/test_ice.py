"""ICE servers and TURN credentials: the REST API scheme, the API's shape, and a real coturn
that grants an allocation for fresh credentials and refuses the rest."""

import asyncio
import base64
import hashlib
import hmac
import time

import aioice
import pytest
from aioice import stun, turn
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from call_svc.ice import (
    IceServers,
    KvsIceServers,
    check_turn_credentials,
    ice_provider,
    make_turn_credentials,
)
from call_svc.settings import CallSettings

NOW = 1_700_000_000.6
SECRET = "shared-with-coturn"


def call_settings(**values) -> CallSettings:
    return CallSettings(database_url="sqlite+aiosqlite://", **values)


# --- the REST API scheme --------------------------------------------------------------------

def test_username_is_the_expiry_in_unix_seconds_then_the_user_id():
    username, _ = make_turn_credentials(SECRET, "alice", ttl_s=600, now=NOW)
    assert username == "1700000600:alice"


def test_credential_is_the_base64_hmac_sha1_of_the_username_keyed_with_the_secret():
    username, credential = make_turn_credentials(SECRET, "alice", ttl_s=600, now=NOW)
    expected = hmac.new(b"shared-with-coturn", b"1700000600:alice", "sha1").digest()
    assert credential == base64.b64encode(expected).decode()
    assert len(base64.b64decode(credential)) == hashlib.sha1().digest_size


def test_check_accepts_credentials_until_they_expire():
    username, credential = make_turn_credentials(SECRET, "alice", ttl_s=600, now=NOW)
    assert check_turn_credentials(SECRET, username, credential, now=NOW)
    assert check_turn_credentials(SECRET, username, credential, now=NOW + 599)
    assert not check_turn_credentials(SECRET, username, credential, now=NOW + 601)


def test_check_refuses_a_tampered_credential_username_or_secret():
    username, credential = make_turn_credentials(SECRET, "alice", ttl_s=600, now=NOW)
    tampered = base64.b64encode(bytes([base64.b64decode(credential)[0] ^ 1])
                                + base64.b64decode(credential)[1:]).decode()
    assert not check_turn_credentials(SECRET, username, tampered, now=NOW)
    assert not check_turn_credentials(SECRET, "1800000000:alice", credential, now=NOW)
    assert not check_turn_credentials(SECRET, "1700000600:mallory", credential, now=NOW)
    assert not check_turn_credentials("another-secret", username, credential, now=NOW)


@pytest.mark.parametrize("username", ["alice", ":alice", "soon:alice", "-5:alice", ""])
def test_check_refuses_a_username_without_an_expiry(username):
    credential = base64.b64encode(hmac.new(SECRET.encode(), username.encode(), "sha1").digest())
    assert not check_turn_credentials(SECRET, username, credential.decode(), now=NOW)


# --- what GET /api/calls/ice-servers answers --------------------------------------------------

async def test_nothing_configured_gives_no_ice_servers():
    assert await IceServers(call_settings(ice_ttl_s=900)).for_user("alice") == ([], 900)


async def test_stun_servers_come_without_credentials():
    stun_only = IceServers(call_settings(stun_urls=("stun:stun.example.org:3478",)))
    assert await stun_only.for_user("alice") == ([{"urls": ["stun:stun.example.org:3478"]}], 3600)


async def test_turn_servers_come_with_credentials_for_the_user_that_expire_after_the_ttl():
    configured = call_settings(stun_urls=("stun:turn.example.org:3478",),
                               turn_urls=("turn:turn.example.org:3478?transport=udp",
                                          "turn:turn.example.org:3478?transport=tcp"),
                               turn_secret=SECRET, ice_ttl_s=1200)
    ice = IceServers(configured, clock=lambda: NOW)
    servers, ttl_s = await ice.for_user("alice")
    assert ttl_s == 1200
    assert servers[0] == {"urls": ["stun:turn.example.org:3478"]}
    assert servers[1]["urls"] == ["turn:turn.example.org:3478?transport=udp",
                                  "turn:turn.example.org:3478?transport=tcp"]
    assert servers[1]["username"] == "1700001200:alice"
    assert check_turn_credentials(SECRET, servers[1]["username"], servers[1]["credential"],
                                  now=NOW + 1199)
    assert len(servers) == 2


def test_turn_urls_without_a_secret_are_refused_at_startup():
    with pytest.raises(ValueError, match="TURN_SECRET"):
        IceServers(call_settings(turn_urls=("turn:turn.example.org:3478",)))


def test_the_provider_follows_the_settings():
    assert isinstance(ice_provider(call_settings()), IceServers)
    kvs = call_settings(ice_provider="kvs", kvs_channel_arn="arn:aws:kinesisvideo:x")
    assert isinstance(ice_provider(kvs, session=object()), KvsIceServers)
    with pytest.raises(ValueError, match="KVS_CHANNEL_ARN"):
        ice_provider(call_settings(ice_provider="kvs"), session=object())
    with pytest.raises(ValueError, match="unknown ICE_PROVIDER"):
        ice_provider(call_settings(ice_provider="xirsys"))


# --- a real coturn ----------------------------------------------------------------------------

async def relay_candidates(coturn, username: str, credential: str) -> list[aioice.Candidate]:
    connection = aioice.Connection(
        ice_controlling=True, turn_server=(coturn.host, coturn.port),
        turn_username=username, turn_password=credential, turn_transport="udp")
    try:
        await connection.gather_candidates()
        return [c for c in connection.local_candidates if c.type == "relay"]
    finally:
        await connection.close()


async def refusal(coturn, username: str, credential: str) -> int:
    """The STUN error code coturn answers an allocation request with."""
    with pytest.raises(stun.TransactionFailed) as refused:
        await turn.create_turn_endpoint(asyncio.DatagramProtocol,
                                        server_addr=(coturn.host, coturn.port),
                                        username=username, password=credential)
    return refused.value.response.error_code


async def test_coturn_relays_for_fresh_credentials(coturn):
    ice = IceServers(call_settings(turn_urls=(coturn.url,), turn_secret=coturn.secret))
    servers, _ = await ice.for_user("alice")
    relays = await relay_candidates(coturn, servers[0]["username"], servers[0]["credential"])
    assert [(c.host, c.transport) for c in relays] == [("127.0.0.1", "udp")]


async def test_coturn_refuses_expired_credentials(coturn):
    expired = make_turn_credentials(coturn.secret, "alice", ttl_s=-60, now=time.time())
    assert await relay_candidates(coturn, *expired) == []
    assert await refusal(coturn, *expired) == 401


async def test_coturn_refuses_credentials_signed_with_another_secret(coturn):
    forged = make_turn_credentials("not-" + coturn.secret, "alice", ttl_s=600, now=time.time())
    assert await relay_candidates(coturn, *forged) == []
    assert await refusal(coturn, *forged) == 401


async def test_two_peers_with_only_turn_connect_through_the_relay(coturn):
    ice = IceServers(call_settings(turn_urls=(coturn.url,), turn_secret=coturn.secret))
    peers = []
    for user in ("alice", "bob"):
        servers, _ = await ice.for_user(user)
        config = RTCConfiguration(iceServers=[RTCIceServer(**s) for s in servers],
                                  iceTransportPolicy=RTCIceTransportPolicy.RELAY)
        peers.append(RTCPeerConnection(config))
    caller, callee = peers
    try:
        received: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        callee.on("datachannel", lambda channel: channel.on(
            "message", lambda message: received.done() or received.set_result(message)))
        channel = caller.createDataChannel("chat")
        channel.on("open", lambda: channel.send("hello through the relay"))

        await caller.setLocalDescription(await caller.createOffer())
        offer = caller.localDescription
        await callee.setRemoteDescription(offer)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)

        for sdp in (offer.sdp, callee.localDescription.sdp):
            types = {line.split(" typ ")[1].split()[0]
                     for line in sdp.splitlines() if line.startswith("a=candidate:")}
            assert types == {"relay"}
        assert await asyncio.wait_for(received, 10) == "hello through the relay"
    finally:
        for peer in peers:
            await peer.close()
