"""Chat service settings."""

from chassis.settings import ServiceSettings


class ChatSettings(ServiceSettings):
    """The chat service's environment; the limits are what clients are held to."""

    service_name: str = "chat"
    text_max: int = 4000
    group_members_max: int = 256
    channel_name_max: int = 100
    history_page_max: int = 200
    sync_page_max: int = 500  # messages per channel a `sync` sends before telling to page
    # WebSocket sessions
    ws_auth_timeout_s: float = 5.0
    ws_frame_max_bytes: int = 64 * 1024
    ws_send_queue_max: int = 256  # frames waiting for a slow client before it is dropped
    ws_allowed_origins: tuple[str, ...] = ()  # empty: any origin (native clients send none)
    typing_interval_s: float = 3.0  # a member's typing frames fan out at most this often
    presence_ttl_s: int = 60  # a replica refreshes its users' presence within this
    fanout_reorder_wait_s: float = 0.05  # a seq heard early waits this long for the one before
