"""Narrow grants: exactly the actions a service's code calls, on exactly its resources.

CDK's broad helpers (grant_read, grant_put, grant_publish) add wildcard actions such as
s3:GetObject* or kms:GenerateDataKey*; these name each action instead."""

from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs


def grant_objects(bucket: s3.IBucket, grantee: iam.IGrantable, prefix: str, *,
                  read: bool = False, write: bool = False) -> None:
    """Read (GetObject, which HeadObject needs too) and/or write (PutObject, and what a
    multipart upload of a large file adds) the objects under `prefix`."""
    actions, key_actions = [], []
    if read:
        actions.append("s3:GetObject")
        key_actions.append("kms:Decrypt")
    if write:
        actions += ["s3:PutObject", "s3:AbortMultipartUpload"]
        # A multipart upload's parts are decrypted to be joined.
        key_actions += ["kms:GenerateDataKey", "kms:Decrypt"]
    iam.Grant.add_to_principal(grantee=grantee, actions=actions,
                               resource_arns=[bucket.arn_for_objects(f"{prefix}*")])
    if bucket.encryption_key:
        bucket.encryption_key.grant(grantee, *sorted(set(key_actions)))


def grant_list(bucket: s3.IBucket, grantee: iam.IGrantable, prefix: str = "") -> None:
    """ListBucket, limited to keys under `prefix` when one is given."""
    conditions = {"StringLike": {"s3:prefix": [f"{prefix}*"]}} if prefix else None
    iam.Grant.add_to_principal(grantee=grantee, actions=["s3:ListBucket"],
                               resource_arns=[bucket.bucket_arn], conditions=conditions)


def grant_publish(topic: sns.ITopic, grantee: iam.IGrantable) -> None:
    """What the outbox relay calls: PublishBatch (authorized as sns:Publish)."""
    iam.Grant.add_to_principal(grantee=grantee, actions=["sns:Publish"],
                               resource_arns=[topic.topic_arn])
    if topic.master_key:
        topic.master_key.grant(grantee, "kms:GenerateDataKey", "kms:Decrypt")


def grant_dlq_watch(dlq: sqs.IQueue, grantee: iam.IGrantable) -> None:
    """What the consumer's depth sampling reads of its queue's DLQ."""
    dlq.grant(grantee, "sqs:GetQueueUrl", "sqs:GetQueueAttributes")
