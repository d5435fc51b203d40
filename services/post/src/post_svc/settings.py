"""Post service settings."""

from chassis.settings import ServiceSettings


class PostSettings(ServiceSettings):
    """The post service's environment; the limits are what clients are held to."""

    service_name: str = "post"
    post_text_max: int = 5000
    content_warning_max: int = 500
    media_per_post_max: int = 4

    # Media: where uploads land and variants are served (set by the provisioner), the limits
    # `GET /api/media/limits` states, and how long an upload form stays valid.
    uploads_bucket: str = "asyncsns-media-uploads"
    media_bucket: str = "asyncsns-media"
    media_base_url: str = "http://127.0.0.1:8080/media"
    upload_endpoint_url: str | None = None  # where clients post forms; None: S3 itself
    upload_expiry_s: int = 600
    image_types: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp", "image/gif",
                                    "image/heic")
    image_max_bytes: int = 16 * 1024 * 1024
    video_types: tuple[str, ...] = ("video/mp4", "video/quicktime", "video/webm")
    video_max_bytes: int = 200 * 1024 * 1024
    audio_types: tuple[str, ...] = ("audio/mpeg", "audio/mp4", "audio/ogg", "audio/wav",
                                    "audio/webm")
    audio_max_bytes: int = 50 * 1024 * 1024
    alt_text_max: int = 1500
    # The worker: how many uploads it processes at once (each ffmpeg run uses every core),
    # and when an upload whose file never came is given up (failed, so its post goes out).
    media_worker_concurrency: int = 2
    media_abandoned_after_s: float = 3600.0
    media_sweep_interval_s: float = 60.0
