"""Query service settings."""

from chassis.settings import ServiceSettings


class QuerySettings(ServiceSettings):
    """The query service's environment."""

    service_name: str = "query"
    search_url: str = ""  # sqlite:///path (embedded) or http(s)://opensearch:9200; "" = beside db
    search_refresh_interval: str = "250ms"
    timeline_max: int = 800  # entries kept per home timeline; older ones are trimmed
    timeline_trim_interval_s: float = 30.0
    fanout_threshold: int = 10_000  # authors with this many followers are merged at read time
    follow_backfill: int = 40  # recent posts copied into a new follower's home timeline
    # First pages of home timelines are cached in Redis, dropped when the reader's timeline
    # changes; like counts and merged-in popular authors lag by this long, and up to twice
    # this long while a view past it is served and refreshed behind (chassis.cache).
    home_cache_ttl_s: int = 5
    archive_bucket: str = "asyncsns-events-archive"
    archive_queues: tuple[str, ...] = ()  # queues carrying every event, to archive in S3
    archive_batch: int = 100
    archive_linger_s: float = 1.0

    def resolved_search_url(self) -> str:
        """The search engine to use: SEARCH_URL, or an embedded index beside a SQLite store."""
        if self.search_url:
            return self.search_url
        prefix = "sqlite+aiosqlite:///"
        if self.database_url.startswith(prefix):
            return f"sqlite:///{self.database_url[len(prefix):]}.search"
        raise ValueError("SEARCH_URL must be set when the store is not SQLite")
