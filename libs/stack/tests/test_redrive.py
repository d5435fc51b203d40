"""The redrive command: DLQ messages go back to their queue, attributes and all."""

import uuid

import boto3

from chassis.testing import FAKE_AWS, REGION
from stack.redrive import main


def test_redrive_moves_dead_letters_back_with_their_attributes(moto_endpoint: str,
                                                               capsys) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name=REGION, **FAKE_AWS)
    queue = f"redrive-{uuid.uuid4().hex[:8]}"
    queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    dlq_url = sqs.create_queue(QueueName=f"{queue}-dlq")["QueueUrl"]
    for n in range(3):
        sqs.send_message(QueueUrl=dlq_url, MessageBody=f"event {n}", MessageAttributes={
            "event_type": {"DataType": "String", "StringValue": "post.created"}})

    main([queue, "--endpoint", moto_endpoint])

    assert "moved 3 message(s)" in capsys.readouterr().out
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                   MessageAttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    assert sorted(m["Body"] for m in received) == ["event 0", "event 1", "event 2"]
    assert {m["MessageAttributes"]["event_type"]["StringValue"] for m in received} == {
        "post.created"}
    assert "Messages" not in sqs.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=0)
