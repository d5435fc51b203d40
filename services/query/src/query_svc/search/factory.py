"""Choose the search engine from one setting: a SQLite URL or an OpenSearch URL."""

from . import SearchEngine
from .embedded import EmbeddedSearch
from .opensearch import OpenSearchEngine


def engine_from_url(url: str, *, prefix: str = "asyncsns-",
                    refresh_interval: str = "250ms") -> SearchEngine:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` or `sqlite:///:memory:` (the
    SQLAlchemy spelling) -> EmbeddedSearch; `http(s)://host:port` -> OpenSearchEngine, with
    indexes `{prefix}posts`, `{prefix}users` and `{prefix}messages` refreshed every
    `refresh_interval` (the embedded engine shows every write at once and ignores both)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path:
            return EmbeddedSearch(path)
    elif url.startswith(("http://", "https://")):
        return OpenSearchEngine(url, prefix, refresh_interval=refresh_interval)
    raise ValueError(f"unsupported search URL {url!r}: use sqlite:///<path> or http(s)://...")
