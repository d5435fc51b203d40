"""The system's topology, declared once: read by the provisioner, the launcher, compose and CDK."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Subscription:
    """A consumer's queue on another service's topic, with its filter and its DLQ."""

    queue: str
    topic: str
    event_types: tuple[str, ...] = ()
    archive: bool = False  # every event of the topic, unfiltered, for the event archive
    # Routing attributes (`EventData.routing`) an event must also carry, as (name, value).
    require: tuple[tuple[str, str], ...] = ()

    @property
    def dlq(self) -> str:
        return f"{self.queue}-dlq"

    @property
    def filter_policy(self) -> dict[str, list[str]] | None:
        """The SNS filter on the relay's message attributes; archives take every event."""
        if self.archive:
            return None
        return {"event_type": sorted(self.event_types),
                **{name: [value] for name, value in self.require}}


@dataclass(frozen=True)
class Uploads:
    """A bucket whose new objects under any of `prefixes` (all objects if none) are announced
    on one queue (S3 event notifications -> SQS)."""

    queue: str
    bucket: str
    prefixes: tuple[str, ...] = ()

    @property
    def dlq(self) -> str:
        return f"{self.queue}-dlq"


@dataclass(frozen=True)
class Worker:
    """A process of a service beside its web app (same image and database), consuming its
    own queues: the media worker transcodes uploads without slowing the API."""

    name: str
    app: str  # uvicorn factory, "module:build_app"
    port: int
    uploads: tuple[Uploads, ...] = ()


@dataclass(frozen=True)
class Service:
    """One service: where it listens locally, which paths route to it, what it consumes."""

    name: str
    port: int
    routes: tuple[str, ...]
    publishes: bool = True
    subscriptions: tuple[Subscription, ...] = ()
    needs_redis: bool = False
    needs_cognito_admin: bool = False
    needs_search: bool = False
    needs_media: bool = False  # the media buckets and their public URLs
    workers: tuple[Worker, ...] = ()
    system_packages: tuple[str, ...] = ()  # Debian packages its image needs (ffmpeg)
    replicas: int = 1  # how many the launcher and compose run unless told otherwise
    queues: tuple[str, ...] = ()  # plain queues it sends to itself (a dead-letter queue)
    needs_push: bool = False  # VAPID keys and the SNS platform applications
    # Its outbox is relayed and its queues drained by a process of its own beside the
    # replicas, which then only serve requests: for services whose events bring much work,
    # or whose replicas must answer fast (locally that process runs at a lower CPU priority,
    # so requests come first; in compose and on AWS every task does both).
    events_process: bool = False

    @property
    def path_routes(self) -> tuple[tuple[str | None, str], ...]:
        """(method, path prefix) pairs: a route is "/prefix" (any method) or "GET /prefix"."""
        pairs = []
        for route in self.routes:
            method, _, path = route.rpartition(" ")
            pairs.append((method or None, path))
        return tuple(pairs)

    @property
    def topic(self) -> str | None:
        return f"{self.name}-events" if self.publishes else None


@dataclass(frozen=True)
class UserPool:
    name: str
    client: str
    password_min_length: int = 8

    @property
    def password_policy(self) -> dict[str, object]:
        """Cognito PasswordPolicy: length alone, as NIST SP 800-63B advises (composition rules
        make passwords worse); the profile service's domain rule mirrors it."""
        return {"MinimumLength": self.password_min_length, "RequireLowercase": False,
                "RequireNumbers": False, "RequireUppercase": False, "RequireSymbols": False}


@dataclass(frozen=True)
class Topology:
    services: tuple[Service, ...]
    user_pool: UserPool
    buckets: tuple[str, ...] = ()
    archive_bucket: str = ""  # where every event is kept as JSON lines, for replay
    uploads_bucket: str = ""  # private: originals as clients upload them, never served
    media_bucket: str = ""  # public: processed variants, served under MEDIA_PATH
    push_platforms: tuple[tuple[str, str], ...] = ()  # (kind, SNS platform) for mobile push
    gateway_port: int = 8080
    health_port: int = 8099
    max_receive_count: int = 5
    queue_retention_s: int = 4 * 24 * 3600
    dlq_retention_s: int = 14 * 24 * 3600
    visibility_timeout_s: int = 30
    region: str = "us-east-1"
    extra: dict[str, str] = field(default_factory=dict)

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(s.topic for s in self.services if s.topic)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(sub for s in self.services for sub in s.subscriptions)

    @property
    def uploads(self) -> tuple[Uploads, ...]:
        return tuple(u for s in self.services for w in s.workers for u in w.uploads)


# Where the gateway (locally) and the CDN (on AWS) serve the media bucket, and where clients
# post uploads to when S3 is not reached directly (the local stack: moto behind the gateway).
MEDIA_PATH = "/media/"
UPLOADS_PATH = "/uploads/"


ARCHIVE_BUCKET = "asyncsns-events-archive"
UPLOADS_BUCKET = "asyncsns-media-uploads"
MEDIA_BUCKET = "asyncsns-media"
TOPOLOGY = Topology(
    services=(
        Service(
            name="profile",
            port=8101,
            routes=("/api/auth/", "/api/profiles/"),
            needs_cognito_admin=True,
            # Its relay (follows) and its post counts: with events sent in batches they keep
            # up with the floods, and at nice 10 they no longer slow the requests.
            events_process=True,
            subscriptions=(
                Subscription("profile-post", "post", (
                    "post.created", "post.deleted", "media.ready", "media.failed")),
            ),
        ),
        Service(
            name="post",
            port=8102,
            routes=("/api/posts", "/api/media"),
            needs_media=True,
            system_packages=("ffmpeg",),
            events_process=True,  # its relay, out of the replicas that take the posts
            subscriptions=(
                Subscription("post-graph", "profile", (
                    "graph.blocked", "graph.unblocked", "graph.followed", "graph.unfollowed")),
            ),
            # Clients upload originals; the call service puts its recordings.
            workers=(Worker("media-worker", "post_svc.media_worker:build_app", 8112, uploads=(
                Uploads("post-media-uploads", UPLOADS_BUCKET,
                        prefixes=("originals/", "recordings/")),)),),
        ),
        Service(
            name="query",
            port=8103,
            # Reads of posts are the read side's; writes to /api/posts go to the post service.
            routes=("GET /api/posts", "/api/timelines/", "/api/search"),
            publishes=False,
            needs_search=True,
            events_process=True,  # projections, search indexing and the archive
            subscriptions=(
                Subscription("query-profile", "profile", (
                    "profile.created", "profile.updated", "graph.followed", "graph.unfollowed",
                    "graph.blocked", "graph.unblocked", "graph.muted", "graph.unmuted")),
                Subscription("query-post", "post", (
                    "post.created", "post.edited", "post.deleted", "post.liked",
                    "post.unliked")),
                Subscription("query-chat", "chat", (
                    "chat.channel_created", "chat.members_changed", "chat.message_posted",
                    "chat.message_changed")),
                Subscription("archive-profile", "profile", archive=True),
                Subscription("archive-post", "post", archive=True),
                Subscription("archive-chat", "chat", archive=True),
                Subscription("archive-call", "call", archive=True),
            ),
        ),
        Service(
            name="chat",
            port=8104,
            routes=("/api/chat/", "/ws/chat"),
            needs_redis=True,
            events_process=True,  # its relay took a sixth of a replica at 260 messages/s
            replicas=2,  # sessions on either replica reach each other through Redis
            subscriptions=(
                Subscription("chat-profile", "profile", (
                    "profile.created", "graph.blocked", "graph.unblocked")),
            ),
        ),
        Service(
            name="notifier",
            port=8105,
            routes=("/api/notifications",),
            publishes=False,
            needs_redis=True,
            needs_push=True,
            events_process=True,  # notifications and their pushes
            queues=("notifier-push-dlq",),
            subscriptions=(
                Subscription("notifier-profile", "profile", (
                    "profile.created", "profile.updated", "graph.followed",
                    "graph.unfollowed", "graph.blocked", "graph.unblocked", "graph.muted",
                    "graph.unmuted")),
                # Only posts that reply to someone or mention anyone, and others' likes.
                Subscription("notifier-post", "post", ("post.created", "post.liked"),
                             require=(("notify", "yes"),)),
                # Only messages with members to push to (most have none: all are online).
                Subscription("notifier-chat", "chat", ("chat.message_posted",),
                             require=(("push", "yes"),)),
                Subscription("notifier-call", "call", ("call.ringing", "call.ended")),
            ),
        ),
        Service(
            name="call",
            port=8106,
            routes=("/api/calls", "/ws/calls/", "/api/live"),
            needs_redis=True,
            needs_media=True,  # recordings go to the uploads bucket, live HLS to the media one
            system_packages=("ffmpeg",),  # composing a recording's participants into one file
            replicas=2,  # signaling on either replica reaches the other through Redis
            subscriptions=(
                Subscription("call-profile", "profile", (
                    "profile.created", "graph.blocked", "graph.unblocked")),
                Subscription("call-chat", "chat", (
                    "chat.channel_created", "chat.members_changed")),
            ),
        ),
    ),
    user_pool=UserPool(name="asyncsns-users", client="asyncsns-web"),
    push_platforms=(("apns", "APNS_SANDBOX"), ("fcm", "GCM")),
    buckets=(ARCHIVE_BUCKET, UPLOADS_BUCKET, MEDIA_BUCKET),
    archive_bucket=ARCHIVE_BUCKET,
    uploads_bucket=UPLOADS_BUCKET,
    media_bucket=MEDIA_BUCKET,
)
