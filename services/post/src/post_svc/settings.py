"""Post service settings."""

from chassis.settings import ServiceSettings


class PostSettings(ServiceSettings):
    """The post service's environment; the limits are what clients are held to."""

    service_name: str = "post"
    post_text_max: int = 5000
    content_warning_max: int = 500
    media_per_post_max: int = 4
