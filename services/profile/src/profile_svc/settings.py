"""Profile service settings."""

from chassis.settings import ServiceSettings


class ProfileSettings(ServiceSettings):
    """The profile service's environment."""

    service_name: str = "profile"
    auto_confirm_signups: bool = True
    profile_cache_ttl_s: int = 30
    login_attempts_per_window: int = 10
    login_window_s: int = 300
