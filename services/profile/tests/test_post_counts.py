"""posts_count follows the post service's events, once per post whatever the order."""

from chassis.db import utcnow
from chassis.events import new_event
from chassis.testing import aws_client, wait_until
from post_svc import events as post_events


def post_event(kind, author_id: str, post_id: str, seq: int):
    if kind is post_events.PostDeleted:
        data = kind(post_id=post_id, author_id=author_id, seq=seq, deleted_at=utcnow())
    else:
        data = kind(post_id=post_id, author_id=author_id, author_username="x", text="hi",
                    visibility="public", version=1, seq=seq, created_at=utcnow())
    return new_event(data, producer="post", subject=f"post:{post_id}", actor=author_id)


async def test_posts_count_counts_each_post_once(client, signup, post_queue, moto_endpoint):
    alice = await signup()
    sqs = aws_client("sqs", moto_endpoint)
    created = [post_event(post_events.PostCreated, alice.user_id, f"p{i}", 1) for i in range(3)]
    # p0 deleted after its create, p2 deleted before its create arrives, duplicates of both.
    events = [created[0], created[1], post_event(post_events.PostDeleted, alice.user_id, "p0", 2),
              post_event(post_events.PostDeleted, alice.user_id, "p2", 2), created[2],
              created[1]]
    for event in events:
        sqs.send_message(QueueUrl=post_queue[1], MessageBody=event.model_dump_json())

    async def counted() -> bool:
        me = await client.get("/api/profiles/me", headers=alice.headers)
        return me.json()["posts_count"] == 1

    await wait_until(counted, "only p1 is counted")
    sqs.send_message(QueueUrl=post_queue[1], MessageBody=post_event(
        post_events.PostDeleted, alice.user_id, "p1", 2).model_dump_json())

    async def none_left() -> bool:
        me = await client.get("/api/profiles/me", headers=alice.headers)
        return me.json()["posts_count"] == 0

    await wait_until(none_left, "the count drops when p1 is deleted, cached view dropped too")
