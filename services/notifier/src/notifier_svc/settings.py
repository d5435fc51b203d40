"""Notifier settings."""

from chassis.settings import ServiceSettings


class NotifierSettings(ServiceSettings):
    """The notifier's environment: push credentials, delivery policy, local mode."""

    service_name: str = "notifier"
    # A notification is a few small writes, grouped into shared commits: more events in
    # flight make bigger groups, where 10 left the SQLite writer waiting on the next receive.
    consumer_concurrency: int = 40
    # Web Push (RFC 8292): the VAPID key pair (base64url raw private scalar, public point) and
    # the contact the push services may write to. The launcher generates a pair on first start.
    vapid_private_key: str = ""
    vapid_public_key: str = ""
    vapid_subject: str = "mailto:ops@asyncsns.invalid"
    push_ttl_s: int = 24 * 3600
    # Mobile push through SNS platform applications (moto locally).
    apns_platform_arn: str | None = None
    fcm_platform_arn: str | None = None
    # Delivery: retries with exponential backoff and jitter, then the DLQ.
    push_timeout_s: float = 10.0
    push_max_attempts: int = 8
    push_backoff_base_s: float = 1.0
    push_backoff_max_s: float = 3600.0
    # Pushes wait on other people's servers (tens of ms each): 500 a second at 60 ms a push
    # need 30 under way at every instant, so 32 slots left no room for a slow receiver.
    push_concurrency: int = 128
    push_poll_interval_s: float = 0.5
    breaker_failures: int = 5  # consecutive failures that open a provider's circuit
    breaker_open_s: float = 30.0
    push_dlq: str = "notifier-push-dlq"
    # Local mode lets subscriptions point at loopback/private addresses (test receivers).
    allow_private_push_endpoints: bool = False
    stream_keepalive_s: float = 15.0
