"""Chat events into the read side: who is in each channel now, and the messages search finds.

Membership follows `chat.channel_created` and `chat.members_changed` only. Each carries the
channel's whole member list, and the newest list wins, ordered by (its time, its event id):
`created_at` for the creation, `changed_at` for a change. A repeated or late older list
changes nothing. Message events carry `member_ids` too, but with no version to compare them
by: a late message event would re-admit someone removed since, so they are not used. A
message that arrives before its channel's membership is stored and indexed, and found by
no one until the membership arrives.

A message follows its `change_seq` (the chat service raises it with every change to a
message in its channel): an event applies only if it is newer than what the row holds. A
deleted message keeps its row as a tombstone (no text, `deleted`), so an older edit that
arrives late cannot bring the text back; the search engines keep the version the same way.
"""

from collections.abc import Callable

from sqlalchemy import bindparam, delete, insert
from sqlalchemy.engine import Connection

from chassis.consumer import Apply
from chassis.events import Envelope
from chat_svc import events as chat_events

from .models import chat_channels, chat_members, chat_messages
from .rows import NEVER, locked, newer, set_values
from .search import MessageDoc, SearchEngine

_FORGET_MEMBERS = delete(chat_members).where(chat_members.c.channel_id == bindparam("channel"))


def on_membership(conn: Connection, envelope: Envelope) -> None:
    """Replace the channel's members with the event's list if the event is the newest."""
    data: chat_events.ChannelCreated | chat_events.MembersChanged
    if envelope.type == "chat.channel_created":
        data = chat_events.ChannelCreated.model_validate(envelope.data)
        at = data.created_at
    else:
        data = chat_events.MembersChanged.model_validate(envelope.data)
        at = data.changed_at
    key = {"channel_id": data.channel_id}
    row = locked(conn, chat_channels, key, {"changed_at": NEVER, "changed_by": ""},
                 "changed_at", "changed_by")
    if not newer(at, envelope.id, row):
        return
    set_values(conn, chat_channels, key, {"changed_at": at, "changed_by": envelope.id})
    conn.execute(_FORGET_MEMBERS, {"channel": data.channel_id})
    if data.member_ids:
        conn.execute(insert(chat_members), [
            {"channel_id": data.channel_id, "user_id": user_id}
            for user_id in dict.fromkeys(data.member_ids)])


def message_of(envelope: Envelope) -> chat_events.Message:
    model = (chat_events.MessagePosted if envelope.type == "chat.message_posted"
             else chat_events.MessageChanged)
    return model.model_validate(envelope.data).message


def on_message(conn: Connection, envelope: Envelope) -> None:
    """Store the message as it stands after the change, if the change is newer."""
    message = message_of(envelope)
    key = {"id": message.id}
    row = locked(conn, chat_messages, key, {
        "channel_id": message.channel_id, "seq": message.seq, "sender_id": message.sender_id,
        "created_at": message.created_at, "change_seq": 0}, "change_seq")
    if row.change_seq >= message.change_seq:
        return
    set_values(conn, chat_messages, key, {
        "text": message.text, "edited_at": message.edited_at, "deleted": message.deleted,
        "change_seq": message.change_seq})


def message_doc(message: chat_events.Message) -> MessageDoc:
    return MessageDoc(message_id=message.id, channel_id=message.channel_id,
                      sender_id=message.sender_id, text=message.text,
                      created_at=message.created_at, version=message.change_seq,
                      deleted=message.deleted)


def handlers(engine: Callable[[], SearchEngine]) -> dict[str, Apply]:
    """The chat queue's handlers. `engine()` is the search engine, a callable because the
    engine is only chosen when the service starts."""

    async def index_message(envelope: Envelope) -> None:
        await engine().index_message(message_doc(message_of(envelope)))

    membership = Apply(on_membership)
    message = Apply(on_message, before=index_message)
    return {"chat.channel_created": membership, "chat.members_changed": membership,
            "chat.message_posted": message, "chat.message_changed": message}
