"""A query service wired to a real moto (SNS, SQS, S3, Cognito), a fresh store and a fresh
embedded search index per test, fed by events published the way the producers publish them."""

import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from jose import jwt

from chassis.db import utcnow
from chassis.events import Envelope, EventData, new_event
from chassis.testing import aws_client, serve_in_process
from chassis.text import hashtags, mentions
from chat_svc import events as chat_events
from post_svc import events as post_events
from profile_svc import events as profile_events
from query_svc.main import build_app
from query_svc.search import SearchEngine
from query_svc.search.embedded import EmbeddedSearch
from query_svc.search.opensearch import OpenSearchEngine
from query_svc.settings import QuerySettings

QUEUES = {"query-profile": "profile", "query-post": "post", "query-chat": "chat",
          "archive-profile": "profile", "archive-post": "post", "archive-chat": "chat"}

OPENSEARCH_URL = os.environ.get("OPENSEARCH_URL", "")
ENGINES = [
    "embedded",
    pytest.param("opensearch", marks=pytest.mark.skipif(
        not OPENSEARCH_URL, reason="OPENSEARCH_URL is not set: no OpenSearch server to test")),
]


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[SearchEngine]:
    """Each search engine reachable, empty (the search conformance suites run on each)."""
    if request.param == "embedded":
        engine: Any = EmbeddedSearch(str(tmp_path / "search.db"))
    else:
        engine = OpenSearchEngine(OPENSEARCH_URL, prefix=f"test-{uuid.uuid4().hex[:10]}-")
    await engine.start()
    try:
        yield engine
    finally:
        if isinstance(engine, OpenSearchEngine):
            await engine.client.indices.delete(index=",".join(
                (engine.posts_index, engine.users_index, engine.messages_index)))
        await engine.close()


@dataclass
class User:
    user_id: str
    username: str
    headers: dict[str, str]


@dataclass
class Bus:
    """The producers' topics, as the query service's queues are subscribed to them."""

    sns: Any
    topics: dict[str, str]
    bucket: str
    prefix: str

    def publish(self, *events: Envelope) -> None:
        for event in events:
            self.sns.publish(
                TopicArn=self.topics[event.producer], Message=event.model_dump_json(),
                MessageAttributes={"event_type": {"DataType": "String",
                                                  "StringValue": event.type}})


@pytest.fixture
def bus(moto_endpoint: str) -> Bus:
    sns, sqs, s3 = (aws_client(n, moto_endpoint) for n in ("sns", "sqs", "s3"))
    run = uuid.uuid4().hex[:8]
    topics = {p: sns.create_topic(Name=f"{p}-events-{run}")["TopicArn"]
              for p in ("profile", "post", "chat")}
    prefix = f"t{run}-"
    for queue, producer in QUEUES.items():
        dlq = sqs.create_queue(QueueName=f"{prefix}{queue}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
        redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"],
                   "maxReceiveCount": "5"}
        url = sqs.create_queue(QueueName=prefix + queue,
                               Attributes={"RedrivePolicy": json.dumps(redrive)})["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        sns.subscribe(TopicArn=topics[producer], Protocol="sqs",
                      Endpoint=arn["Attributes"]["QueueArn"],
                      Attributes={"RawMessageDelivery": "true"})
    bucket = f"archive-{run}"
    s3.create_bucket(Bucket=bucket)
    return Bus(sns, topics, bucket, prefix)


def query_settings(**overrides: Any) -> QuerySettings:
    return QuerySettings(aws_access_key_id="testing", aws_secret_access_key="testing",
                         consumer_wait_time_s=1, consumer_retry_base_s=1, log_json=False,
                         archive_linger_s=0.2, timeline_trim_interval_s=0.5, **overrides)


@pytest.fixture
def settings(database_url, tmp_path, cognito, moto_endpoint, bus, redis_url) -> QuerySettings:
    return query_settings(
        database_url=database_url, search_url=f"sqlite:///{tmp_path / 'search.db'}",
        redis_url=redis_url,
        aws_endpoint_url=moto_endpoint, queue_prefix=bus.prefix, archive_bucket=bus.bucket,
        archive_queues=("archive-profile", "archive-post", "archive-chat"), fanout_threshold=3,
        **cognito.env())


@pytest.fixture
async def client(settings):
    app = build_app(settings)
    async with serve_in_process(app) as http:
        http.app = app
        yield http


@pytest.fixture
def make_user(cognito):
    """A Cognito user (with a real access token) whose id the events below use."""

    def make(prefix: str = "u") -> User:
        username = f"{prefix}_{uuid.uuid4().hex[:8]}"
        token = cognito.tokens(username)["AccessToken"]
        sub = jwt.get_unverified_claims(token)["sub"]
        return User(sub, username, {"Authorization": f"Bearer {token}"})

    return make


@dataclass
class World:
    """Builds the events the profile, post and chat services would publish, with their rules
    (per-post seq and version, per-channel seq), so tests can deliver them in any order or
    twice."""

    posts: dict[str, post_events.PostState] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)  # channel -> member ids
    channel_seqs: dict[str, int] = field(default_factory=dict)
    messages: dict[str, chat_events.Message] = field(default_factory=dict)

    def _event(self, data: EventData, producer: str, subject: str, actor: str) -> Envelope:
        return new_event(data, producer=producer, subject=subject, actor=actor)

    def profile(self, user: User, display_name: str | None = None) -> Envelope:
        return self._event(profile_events.ProfileCreated(
            user_id=user.user_id, username=user.username,
            display_name=display_name or user.username.title(), created_at=utcnow()),
            "profile", f"user:{user.user_id}", user.user_id)

    def update_profile(self, user: User, display_name: str, bio: str = "") -> Envelope:
        return self._event(profile_events.ProfileUpdated(
            user_id=user.user_id, username=user.username, display_name=display_name, bio=bio,
            avatar_media_id=None, avatar_url=None), "profile", f"user:{user.user_id}",
            user.user_id)

    def edge(self, kind: type[profile_events.EdgeEvent], actor: User, target: User) -> Envelope:
        return self._event(kind(actor_id=actor.user_id, target_id=target.user_id), "profile",
                           f"user:{actor.user_id}", actor.user_id)

    def post(self, author: User, text: str, *, visibility: str = "public",
             reply_to: str | None = None, media: list[dict] | None = None,
             age: timedelta = timedelta(0)) -> Envelope:
        from ulid import ULID

        created = utcnow() - age
        post_id = str(ULID.from_datetime(created))
        state = post_events.PostCreated(
            post_id=post_id, author_id=author.user_id, author_username=author.username,
            text=text, visibility=visibility, reply_to=reply_to,
            reply_to_author_id=self.posts[reply_to].author_id if reply_to else None,
            media_ids=[m["media_id"] for m in media or []], media=media or [],
            hashtags=hashtags(text), mentions=mentions(text),
            version=1, seq=1, created_at=created)
        self.posts[post_id] = state
        self.seqs[post_id] = 1
        return self._event(state, "post", f"post:{post_id}", author.user_id)

    def _next(self, post_id: str) -> int:
        self.seqs[post_id] += 1
        return self.seqs[post_id]

    def edit(self, post_id: str, text: str) -> Envelope:
        old = self.posts[post_id]
        state = post_events.PostEdited(**{
            **old.model_dump(), "text": text, "hashtags": hashtags(text),
            "mentions": mentions(text), "version": old.version + 1,
            "seq": self._next(post_id), "edited_at": utcnow()})
        self.posts[post_id] = state
        return self._event(state, "post", f"post:{post_id}", old.author_id)

    def delete(self, post_id: str) -> Envelope:
        old = self.posts[post_id]
        return self._event(post_events.PostDeleted(
            post_id=post_id, author_id=old.author_id, reply_to=old.reply_to,
            seq=self._next(post_id), deleted_at=utcnow()), "post", f"post:{post_id}",
            old.author_id)

    def like(self, user: User, post_id: str, *, undo: bool = False) -> Envelope:
        kind = post_events.PostUnliked if undo else post_events.PostLiked
        return self._event(kind(post_id=post_id, post_author_id=self.posts[post_id].author_id,
                                user_id=user.user_id, seq=self._next(post_id)),
                           "post", f"post:{post_id}", user.user_id)

    # chat ---------------------------------------------------------------------------------

    def channel(self, creator: User, *others: User, name: str | None = "group") -> Envelope:
        from ulid import ULID

        channel_id = str(ULID())
        member_ids = [creator.user_id, *(u.user_id for u in others)]
        self.members[channel_id] = member_ids
        self.channel_seqs[channel_id] = 0
        return self._event(chat_events.ChannelCreated(
            channel_id=channel_id, kind="group", name=name, member_ids=member_ids,
            created_by=creator.user_id, created_at=utcnow()), "chat",
            f"channel:{channel_id}", creator.user_id)

    def change_members(self, channel_id: str, actor: User, *, add: tuple[User, ...] = (),
                       remove: tuple[User, ...] = ()) -> Envelope:
        added = [u.user_id for u in add]
        removed = [u.user_id for u in remove]
        now = [m for m in self.members[channel_id] if m not in removed] + added
        self.members[channel_id] = now
        return self._event(chat_events.MembersChanged(
            channel_id=channel_id, member_ids=now, added=added, removed=removed,
            changed_at=utcnow()), "chat", f"channel:{channel_id}", actor.user_id)

    def _channel_seq(self, channel_id: str) -> int:
        self.channel_seqs[channel_id] += 1
        return self.channel_seqs[channel_id]

    def message(self, channel_id: str, sender: User, text: str, *,
                age: timedelta = timedelta(0)) -> Envelope:
        from ulid import ULID

        created = utcnow() - age
        seq = self._channel_seq(channel_id)
        message = chat_events.Message(
            id=str(ULID.from_datetime(created)), channel_id=channel_id, seq=seq,
            change_seq=seq, sender_id=sender.user_id, client_msg_id=uuid.uuid4().hex,
            text=text, created_at=created)
        self.messages[message.id] = message
        return self._event(chat_events.MessagePosted(
            message=message, member_ids=self.members[channel_id]), "chat",
            f"channel:{channel_id}", sender.user_id)

    def _changed(self, message_id: str, **changes: Any) -> Envelope:
        old = self.messages[message_id]
        message = old.model_copy(update={
            **changes, "change_seq": self._channel_seq(old.channel_id)})
        self.messages[message_id] = message
        return self._event(chat_events.MessageChanged(
            message=message, member_ids=self.members[old.channel_id]), "chat",
            f"channel:{old.channel_id}", old.sender_id)

    def edit_message(self, message_id: str, text: str) -> Envelope:
        return self._changed(message_id, text=text, edited_at=utcnow())

    def delete_message(self, message_id: str) -> Envelope:
        return self._changed(message_id, text="", deleted=True, reactions={})

    def react(self, message_id: str, user: User, emoji: str) -> Envelope:
        reactions = {**self.messages[message_id].reactions, emoji: [user.user_id]}
        return self._changed(message_id, reactions=reactions)


@pytest.fixture
def world() -> World:
    return World()
