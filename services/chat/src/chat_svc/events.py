"""Events the chat service publishes (topic chat-events)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from chassis.events import EventData, event_type

PRODUCER = "chat"


class Message(EventData):
    """A message as it stands after the change (event-carried state)."""

    id: str
    channel_id: str
    seq: int = Field(description="its place in the channel")
    change_seq: int = Field(description="the channel seq of its latest change; newer wins")
    sender_id: str
    client_msg_id: str
    text: str = Field(description="empty once deleted")
    created_at: datetime
    edited_at: datetime | None = None
    deleted: bool = False
    reactions: dict[str, list[str]] = Field(default_factory=dict)


@event_type("chat.channel_created", producer=PRODUCER)
class ChannelCreated(EventData):
    channel_id: str
    kind: Literal["dm", "group"]
    name: str | None
    member_ids: list[str]
    created_by: str
    created_at: datetime


@event_type("chat.members_changed", producer=PRODUCER)
class MembersChanged(EventData):
    """Who is in the channel now (after an add, a remove or a leave)."""

    channel_id: str
    member_ids: list[str]
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    changed_at: datetime


@event_type("chat.message_posted", producer=PRODUCER)
class MessagePosted(EventData):
    """A new message. `push_to` are the members other than the sender with no live
    connection when it was posted: the notifier pushes to them, and to no one else."""

    message: Message
    member_ids: list[str]
    push_to: list[str] = Field(default_factory=list)

    @classmethod
    def routing(cls, data: dict[str, Any]) -> dict[str, str]:
        """`push: yes` when someone is to be pushed to: the notifier is sent only those."""
        return {"push": "yes"} if data.get("push_to") else {}


@event_type("chat.message_changed", producer=PRODUCER)
class MessageChanged(EventData):
    """An edit, a delete (a tombstone: text empty, `deleted` true) or a reaction."""

    message: Message
    member_ids: list[str]
