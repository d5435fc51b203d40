"""One settings object per service, read from the environment and nowhere else."""

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service reads from its environment; services subclass it to add their own."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    service_name: str = "service"
    database_url: str = ""
    redis_url: str | None = None

    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None

    events_topic_arn: str | None = None
    consume_queues: tuple[str, ...] = ()
    # True: the process only serves requests; another process of the service (the local
    # stack's `<service>-events`) relays its outbox and drains its queues.
    serve_only: bool = False
    queue_prefix: str = ""

    cognito_issuer: str = ""
    cognito_jwks_url: str = ""
    cognito_client_id: str = ""
    cognito_user_pool_id: str = ""
    jwks_min_refresh_interval_s: float = 30.0

    outbox_poll_interval_s: float = 0.5
    outbox_batch_size: int = 100  # rows per relay pass (it runs on the event loop)
    consumer_wait_time_s: int = 20
    consumer_concurrency: int = 10
    consumer_visibility_timeout_s: int = 30
    consumer_retry_base_s: int = 2
    consumer_max_backoff_s: int = 900
    metrics_poll_interval_s: float = 15.0

    max_body_bytes: int = 1_048_576
    public_url: str = "http://127.0.0.1:8080"  # where clients reach the gateway (or the CDN)
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("database_url")
    @classmethod
    def _database_url_set(cls, value: str) -> str:
        if not value:
            raise ValueError(
                "DATABASE_URL must be set (sqlite+aiosqlite:///... or postgresql+asyncpg://...)")
        return value

    def aws_client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for every aioboto3/boto3 client this service makes."""
        kwargs = {"region_name": self.aws_region}
        if self.aws_endpoint_url:
            kwargs["endpoint_url"] = self.aws_endpoint_url
        if self.aws_access_key_id and self.aws_secret_access_key:
            kwargs["aws_access_key_id"] = self.aws_access_key_id
            kwargs["aws_secret_access_key"] = self.aws_secret_access_key
        return kwargs
