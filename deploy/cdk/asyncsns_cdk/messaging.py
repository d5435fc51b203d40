"""Messaging: every topic, queue, DLQ and subscription of the topology, as stack.provision
makes them locally (raw delivery, filter on `event_type`, redrive after maxReceiveCount, DLQ
kept longer than its queue), encrypted, and reachable only over TLS."""

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stack.provision import queue_policy
from stack.topology import Subscription, Topology

from . import plan


def filter_policy(sub: Subscription) -> dict[str, sns.SubscriptionFilter] | None:
    """The subscription's filter on the relay's attributes (`event_type` and any routing
    attribute it requires); archive queues take every event of their topic."""
    if sub.filter_policy is None:
        return None
    return {name: sns.SubscriptionFilter.string_filter(allowlist=values)
            for name, values in sub.filter_policy.items()}


class MessagingStack(Stack):
    def __init__(self, scope: Construct, id: str, *, topology: Topology,
                 bucket_names: dict[str, str], **kwargs):
        super().__init__(scope, id, **kwargs)
        # Publishers are granted GenerateDataKey and Decrypt on it (access.grant_publish).
        self.key = kms.Key(self, "EventsKey", enable_key_rotation=True,
                           alias="alias/asyncsns-events", description="asyncsns SNS topics")
        self.topics = {
            s.name: sns.Topic(self, f"{s.name.title()}Events", topic_name=s.topic,
                              master_key=self.key, enforce_ssl=True)
            for s in topology.services if s.topic}
        self.queues: dict[str, sqs.Queue] = {}
        self.dlqs: dict[str, sqs.Queue] = {}
        for sub in topology.subscriptions:
            queue = self._queue_with_dlq(sub.queue, sub.dlq, topology)
            topic = self._topic(sub)
            topic.add_subscription(subscriptions.SqsSubscription(
                queue, raw_message_delivery=True, filter_policy=filter_policy(sub)))
        for uploads in topology.uploads:
            # The bucket is named, not referenced, so that the queue's policy does not tie
            # this stack to the storage stack (whose notifications refer to the queue).
            queue = self._queue_with_dlq(uploads.queue, uploads.dlq, topology)
            source = f"arn:{self.partition}:s3:::{bucket_names[uploads.bucket]}"
            self._allow(queue, "s3.amazonaws.com", source)
        for name in plan.plain_queues(topology):
            self.dlqs[name] = self._queue(name, Duration.seconds(topology.dlq_retention_s))

    def _topic(self, sub: Subscription) -> sns.Topic:
        for service, topic in self.topics.items():
            if sub.topic in (service, f"{service}-events"):
                return topic
        raise ValueError(f"subscription {sub.queue} names topic {sub.topic}, "
                         "which nothing publishes")

    def _queue_with_dlq(self, name: str, dlq_name: str, topology: Topology) -> sqs.Queue:
        if topology.dlq_retention_s <= topology.queue_retention_s:
            raise ValueError("a DLQ must keep messages longer than its queue")
        dlq = self._queue(dlq_name, Duration.seconds(topology.dlq_retention_s))
        queue = self._queue(
            name, Duration.seconds(topology.queue_retention_s),
            visibility_timeout=Duration.seconds(topology.visibility_timeout_s),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=dlq, max_receive_count=topology.max_receive_count))
        self.dlqs[dlq_name] = dlq
        self.queues[name] = queue
        return queue

    def _queue(self, name: str, retention: Duration, **kwargs) -> sqs.Queue:
        # SQS-managed encryption: SNS and S3 deliver to it without a key policy to keep.
        return sqs.Queue(self, plan.construct_id(name), queue_name=name, retention_period=retention,
                         encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True, **kwargs)

    def _allow(self, queue: sqs.Queue, principal: str, source_arn: str) -> None:
        """The provisioner's queue policy: exactly one source may send to the queue."""
        statement = queue_policy(principal, source_arn, queue.queue_arn)["Statement"][0]
        queue.add_to_resource_policy(iam.PolicyStatement(
            sid=statement["Sid"], principals=[iam.ServicePrincipal(principal)],
            actions=[statement["Action"]], resources=[statement["Resource"]],
            conditions=statement["Condition"]))

