"""ICE servers for calls: the STUN and TURN URLs a client is handed, with TURN credentials.

A TURN relay carries media when the peers cannot reach each other directly, so it must not
be open to anyone: each client gets credentials that expire. With coturn they follow its
REST API scheme (`use-auth-secret`): the service and coturn share a secret and coturn
checks the HMAC itself, so no user list has to be kept in step. On AWS, Kinesis Video
Streams runs the TURN servers and issues the credentials (`ice_provider = "kvs"`).
"""

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any, Protocol

from .settings import CallSettings

IceServer = dict[str, Any]  # {"urls": [...], "username"?: str, "credential"?: str}


def make_turn_credentials(secret: str, user_id: str, *, ttl_s: int,
                          now: float) -> tuple[str, str]:
    """A username and credential that coturn accepts for `user_id` until `now + ttl_s`."""
    username = f"{int(now) + ttl_s}:{user_id}"
    return username, _sign(secret, username)


def check_turn_credentials(secret: str, username: str, credential: str, *, now: float) -> bool:
    """Whether coturn would accept the pair at `now`: the HMAC matches and it has not expired."""
    expiry, separator, _ = username.partition(":")
    if not separator or not expiry.isdigit():
        return False
    return int(expiry) >= int(now) and hmac.compare_digest(_sign(secret, username), credential)


def _sign(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class IceProvider(Protocol):
    """Where `GET /api/calls/ice-servers` gets its answer."""

    async def for_user(self, user_id: str) -> tuple[list[IceServer], int]:
        """The ICE servers for `user_id` and how many seconds they stay usable."""
        ...


class IceServers:
    """The configured STUN URLs, and TURN URLs with credentials signed with `turn_secret`.

    Nothing configured gives no servers: peers on one host or one LAN reach each other with
    host candidates alone.
    """

    def __init__(self, settings: CallSettings, *, clock: Callable[[], float] = time.time):
        if settings.turn_urls and not settings.turn_secret:
            # Coturn would refuse every allocation: fail at startup, not in every call.
            raise ValueError("TURN_URLS need TURN_SECRET (coturn's static-auth-secret)")
        self._stun_urls = list(settings.stun_urls)
        self._turn_urls = list(settings.turn_urls)
        self._secret = settings.turn_secret
        self._ttl_s = settings.ice_ttl_s
        self._clock = clock

    async def for_user(self, user_id: str) -> tuple[list[IceServer], int]:
        """STUN without credentials, TURN with credentials for `user_id`; and their TTL."""
        servers: list[IceServer] = []
        if self._stun_urls:
            servers.append({"urls": self._stun_urls})
        if self._turn_urls:
            username, credential = make_turn_credentials(
                self._secret, user_id, ttl_s=self._ttl_s, now=self._clock())
            servers.append({"urls": self._turn_urls, "username": username,
                            "credential": credential})
        return servers, self._ttl_s


class KvsIceServers:
    """TURN servers and credentials from a Kinesis Video Streams signaling channel.

    Only the channel's ICE configuration is used; the signaling itself stays ours.
    """

    def __init__(self, session: Any, channel_arn: str, client_kwargs: dict[str, Any],
                 stun_urls: tuple[str, ...] = ()):
        self._session = session  # an aioboto3.Session
        self._channel_arn = channel_arn
        self._client_kwargs = client_kwargs
        self._stun_urls = list(stun_urls)
        self._endpoint: str | None = None

    async def for_user(self, user_id: str) -> tuple[list[IceServer], int]:
        """Configured STUN plus the channel's TURN servers; the TTL is the shortest given."""
        endpoint = self._endpoint or await self._signaling_endpoint()
        kwargs = {**self._client_kwargs, "endpoint_url": endpoint}
        async with self._session.client("kinesis-video-signaling", **kwargs) as signaling:
            config = await signaling.get_ice_server_config(
                ChannelARN=self._channel_arn, ClientId=user_id, Service="TURN")
        turn = config["IceServerList"]
        servers: list[IceServer] = [{"urls": self._stun_urls}] if self._stun_urls else []
        servers += [{"urls": s["Uris"], "username": s["Username"], "credential": s["Password"]}
                    for s in turn]
        return servers, min((s["Ttl"] for s in turn), default=0)

    async def _signaling_endpoint(self) -> str:
        # The channel's endpoint does not change; AWS asks clients to look it up once.
        async with self._session.client("kinesisvideo", **self._client_kwargs) as kvs:
            found = await kvs.get_signaling_channel_endpoint(
                ChannelARN=self._channel_arn,
                SingleMasterChannelEndpointConfiguration={"Protocols": ["HTTPS"],
                                                          "Role": "VIEWER"})
        self._endpoint = next(e["ResourceEndpoint"] for e in found["ResourceEndpointList"]
                              if e["Protocol"] == "HTTPS")
        return self._endpoint


def ice_provider(settings: CallSettings, session: Any = None) -> IceProvider:
    """The provider `settings.ice_provider` names (`kvs` needs an aioboto3 session)."""
    if settings.ice_provider == "static":
        return IceServers(settings)
    if settings.ice_provider == "kvs":
        if session is None or not settings.kvs_channel_arn:
            raise ValueError("ICE_PROVIDER=kvs needs KVS_CHANNEL_ARN and an AWS session")
        return KvsIceServers(session, settings.kvs_channel_arn, settings.aws_client_kwargs(),
                             settings.stun_urls)
    raise ValueError(f"unknown ICE_PROVIDER {settings.ice_provider!r} (static or kvs)")
