"""Storage: the private uploads bucket (announcing new originals and recordings on the media
queue), the media bucket (private; CloudFront reads it with origin access control), the
event archive (JSON lines under year=/month=/day=, as Athena and Glue partition them), and
the bucket the others and the edge write their access logs to."""

from aws_cdk import Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stack.provision import queue_notifications
from stack.topology import MEDIA_PATH, Topology

from .messaging import MessagingStack
from .settings import DeploySettings


def bucket_names(topology: Topology) -> dict[str, str]:
    """S3 names are global: the topology's names, made unique per account and region."""
    return {name: f"{name}-{Aws.ACCOUNT_ID}-{Aws.REGION}" for name in topology.buckets}


def upload_notifications(topology: Topology, messaging: MessagingStack
                         ) -> dict[str, list[s3.CfnBucket.QueueConfigurationProperty]]:
    """The provisioner's S3 queue configurations (one per prefix), as CloudFormation spells
    them. Set on the bucket itself: the queue's policy (messaging) already lets S3 send."""
    wanted: dict[str, list[s3.CfnBucket.QueueConfigurationProperty]] = {}
    for uploads in topology.uploads:
        queue = messaging.queues[uploads.queue]
        for configuration in queue_notifications(uploads, queue.queue_arn):
            rules = configuration.get("Filter", {}).get("Key", {}).get("FilterRules", [])
            key_filter = s3.CfnBucket.NotificationFilterProperty(
                s3_key=s3.CfnBucket.S3KeyFilterProperty(rules=[
                    s3.CfnBucket.FilterRuleProperty(name=r["Name"], value=r["Value"])
                    for r in rules])) if rules else None
            wanted.setdefault(uploads.bucket, []).extend(
                s3.CfnBucket.QueueConfigurationProperty(event=event, queue=queue.queue_arn,
                                                        filter=key_filter)
                for event in configuration["Events"])
    return wanted


class StorageStack(Stack):
    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings,
                 topology: Topology, messaging: MessagingStack, names: dict[str, str],
                 **kwargs):
        super().__init__(scope, id, **kwargs)
        self.key = kms.Key(self, "StorageKey", enable_key_rotation=True,
                           alias="alias/asyncsns-storage",
                           description="asyncsns uploads and event archive")
        # CloudFront's standard logs need ACLs; ALB logs need SSE-S3.
        self.logs = s3.Bucket(
            self, "AccessLogs", encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90))],
            removal_policy=RemovalPolicy.RETAIN)
        self.uploads = self._bucket(
            "Uploads", names[topology.uploads_bucket], encryption_key=self.key,
            # Originals are kept only until the media worker made their variants.
            lifecycle_rules=[s3.LifecycleRule(
                expiration=Duration.days(30),
                abort_incomplete_multipart_upload_after=Duration.days(1))],
            # Browsers post their files straight here (presigned POST).
            cors=[s3.CorsRule(allowed_methods=[s3.HttpMethods.POST],
                              allowed_origins=[f"https://{settings.domain_name}"]
                              if settings.domain_name else ["*"],
                              allowed_headers=["*"], max_age=3600)])
        self.media = self._bucket(
            "Media", names[topology.media_bucket], encryption=s3.BucketEncryption.S3_MANAGED,
            lifecycle_rules=[s3.LifecycleRule(
                abort_incomplete_multipart_upload_after=Duration.days(1),
                transitions=[s3.Transition(storage_class=s3.StorageClass.INTELLIGENT_TIERING,
                                           transition_after=Duration.days(30))])])
        self._let_cloudfront_read(self.media)
        self.archive = self._bucket(
            "Archive", names[topology.archive_bucket], encryption_key=self.key, versioned=True,
            lifecycle_rules=[s3.LifecycleRule(
                transitions=[
                    s3.Transition(storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                                  transition_after=Duration.days(30)),
                    s3.Transition(storage_class=s3.StorageClass.GLACIER_INSTANT_RETRIEVAL,
                                  transition_after=Duration.days(180))],
                noncurrent_version_expiration=Duration.days(30))])
        self.buckets = {topology.uploads_bucket: self.uploads, topology.media_bucket: self.media,
                        topology.archive_bucket: self.archive}
        for bucket, configurations in upload_notifications(topology, messaging).items():
            cfn = self.buckets[bucket].node.default_child
            cfn.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
                queue_configurations=configurations)

    def _bucket(self, id: str, name: str, **kwargs) -> s3.Bucket:
        return s3.Bucket(
            self, id, bucket_name=name, block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True, minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.logs, server_access_logs_prefix=f"s3/{id.lower()}/",
            removal_policy=RemovalPolicy.RETAIN, **kwargs)

    def _let_cloudfront_read(self, bucket: s3.Bucket) -> None:
        """Origin access control: CloudFront distributions of this account read the served
        prefix, nobody else reads anything. (Naming the one distribution would tie this stack
        to the edge stack, which already depends on it.)"""
        distributions = f"arn:{Aws.PARTITION}:cloudfront::{Aws.ACCOUNT_ID}:distribution/*"
        bucket.add_to_resource_policy(iam.PolicyStatement(
            sid="cloudfront-reads-media",
            principals=[iam.ServicePrincipal("cloudfront.amazonaws.com")],
            actions=["s3:GetObject"],
            resources=[bucket.arn_for_objects(f"{MEDIA_PATH.strip('/')}/*")],
            conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                        "ArnLike": {"aws:SourceArn": distributions}}))
