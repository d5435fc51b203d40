"""Call service settings."""

from chassis.settings import ServiceSettings


class CallSettings(ServiceSettings):
    """The call service's environment; the limits are what clients are held to."""

    service_name: str = "call"
    participants_max: int = 8  # a group call is a peer-to-peer mesh: everyone sends to everyone
    ring_timeout_s: float = 30.0  # nobody answered by then: the call is missed
    sweep_interval_s: float = 2.0
    # Signaling sessions at /ws/calls/{call_id}
    ws_auth_timeout_s: float = 5.0
    ws_frame_max_bytes: int = 64 * 1024  # an SDP with audio, video and candidates is ~10 KiB
    ws_send_queue_max: int = 128
    ws_allowed_origins: tuple[str, ...] = ()
    # ICE servers handed to clients. TURN credentials follow coturn's REST API scheme:
    # username "<expiry unix time>:<user id>", credential base64(HMAC-SHA1(secret, username)).
    ice_provider: str = "static"  # static (the URLs below) | kvs (Kinesis Video Streams TURN)
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str = ""
    ice_ttl_s: int = 3600
    kvs_channel_arn: str = ""
    # Media the server takes part in: recordings go to the uploads bucket (the post service's
    # media worker turns them into media objects); live HLS goes to the public media bucket.
    uploads_bucket: str = "asyncsns-media-uploads"
    media_bucket: str = "asyncsns-media"
    media_base_url: str = "http://127.0.0.1:8080/media"
    recording_max_s: float = 3600.0  # the media pipeline takes videos up to an hour
    live_title_max: int = 200
    hls_segment_s: float = 2.0
    live_streams_max: int = 8  # WHIP ingests one replica takes at once (each encodes video)
    whep_viewers_max: int = 50  # WebRTC viewers per stream; the rest watch HLS
    sdp_max_bytes: int = 32 * 1024
