"""Applies the declared topology to AWS or moto, idempotently, and says what services need."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import boto3

from .topology import MEDIA_PATH, TOPOLOGY, UPLOADS_PATH, Service, Subscription, Topology, Uploads

LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
AUTH_FLOWS = ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]


def aws_clients(endpoint_url: str | None, region: str) -> dict[str, Any]:
    """boto3 clients for the provisioner; moto takes any credentials, so local ones are fixed."""
    kwargs: dict[str, Any] = {"region_name": region}
    if endpoint_url:
        kwargs.update(endpoint_url=endpoint_url, **LOCAL_CREDENTIALS)
    return {name: boto3.client(name, **kwargs) for name in ("sns", "sqs", "s3", "cognito-idp")}


def provision(topology: Topology = TOPOLOGY, endpoint_url: str | None = None,
              region: str | None = None) -> dict[str, Any]:
    """Create what is missing, converge what exists, and return ARNs, URLs and pool ids."""
    region = region or topology.region
    clients = aws_clients(endpoint_url, region)
    topics = {s.name: clients["sns"].create_topic(Name=s.topic)["TopicArn"]
              for s in topology.services if s.topic}
    queues: dict[str, str] = {}
    for sub in topology.subscriptions:
        topic_arn = _topic_for(sub, topics)
        queues.update(_ensure_queues(clients["sqs"], sub.queue, sub.dlq, topology,
                                     queue_policy("sns.amazonaws.com", topic_arn)))
        queue_arn = _queue_arn(clients["sqs"], queues[sub.queue])
        _ensure_subscription(clients["sns"], topic_arn, queue_arn, sub)
    for bucket in topology.buckets:
        _ensure_bucket(clients["s3"], bucket, region)
    if topology.uploads_bucket:
        _allow_browser_uploads(clients["s3"], topology.uploads_bucket)
    if topology.media_bucket and endpoint_url:
        let_the_gateway_read(clients["s3"], topology.media_bucket)
    for service in topology.services:
        for name in service.queues:
            queues[name] = _ensure_queue(clients["sqs"], name, {
                "MessageRetentionPeriod": str(topology.dlq_retention_s)})
    platforms = _ensure_platforms(clients["sns"], topology) if endpoint_url else {}
    notifications: dict[str, list[dict[str, Any]]] = {}
    for uploads in topology.uploads:
        bucket_arn = f"arn:aws:s3:::{uploads.bucket}"
        queues.update(_ensure_queues(clients["sqs"], uploads.queue, uploads.dlq, topology,
                                     queue_policy("s3.amazonaws.com", bucket_arn)))
        notifications.setdefault(uploads.bucket, []).extend(
            queue_notifications(uploads, _queue_arn(clients["sqs"], queues[uploads.queue])))
    for bucket, configurations in notifications.items():
        _ensure_notifications(clients["s3"], bucket, configurations)
    pool_id, client_id = _ensure_user_pool(clients["cognito-idp"], topology)
    issuer = f"https://cognito-idp.{region}.amazonaws.com/{pool_id}"
    jwks_base = f"{endpoint_url.rstrip('/')}/{pool_id}" if endpoint_url else issuer
    return {
        "region": region,
        "endpoint_url": endpoint_url,
        "topics": topics,
        "queues": queues,
        "buckets": list(topology.buckets),
        "user_pool_id": pool_id,
        "client_id": client_id,
        "issuer": issuer,
        "jwks_url": f"{jwks_base}/.well-known/jwks.json",
        "push_platforms": platforms,
    }


def _topic_for(sub: Subscription, topics: dict[str, str]) -> str:
    # A subscription may name the producing service or its topic; both mean the same topic.
    for service, arn in topics.items():
        if sub.topic in (service, f"{service}-events"):
            return arn
    raise ValueError(f"subscription {sub.queue} names topic {sub.topic}, which nothing publishes")


def _ensure_queues(sqs: Any, queue: str, dlq: str, topology: Topology,
                   policy: dict[str, Any]) -> dict[str, str]:
    """The queue and its DLQ; `policy` names who may send to the queue."""
    dlq_url = _ensure_queue(sqs, dlq, {"MessageRetentionPeriod": str(topology.dlq_retention_s)})
    redrive = {"deadLetterTargetArn": _queue_arn(sqs, dlq_url),
               "maxReceiveCount": str(topology.max_receive_count)}
    url = _ensure_queue(sqs, queue, {
        "MessageRetentionPeriod": str(topology.queue_retention_s),
        "VisibilityTimeout": str(topology.visibility_timeout_s),
        "RedrivePolicy": json.dumps(redrive),
    })
    # moto ignores queue policies; real SQS refuses SNS and S3 deliveries without this one.
    policy = {**policy, "Statement": [{**statement, "Resource": _queue_arn(sqs, url)}
                                      for statement in policy["Statement"]]}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    return {queue: url, dlq: dlq_url}


def _ensure_queue(sqs: Any, name: str, attributes: dict[str, str]) -> str:
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def _queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return attributes["Attributes"]["QueueArn"]


def queue_policy(principal: str, source_arn: str, queue_arn: str = "") -> dict[str, Any]:
    """The queue policy letting exactly one source (a topic, a bucket) send to the queue."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "source-delivers",
            "Effect": "Allow",
            "Principal": {"Service": principal},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": source_arn}},
        }],
    }


def queue_notifications(uploads: Uploads, queue_arn: str) -> list[dict[str, Any]]:
    """S3 queue configurations announcing new objects on the queue: one per prefix, for S3
    takes a single prefix rule per configuration."""
    base = {"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}
    if not uploads.prefixes:
        return [{"Id": uploads.queue, **base}]
    return [{"Id": f"{uploads.queue}-{prefix.strip('/').replace('/', '-')}", **base,
             "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}}
            for prefix in uploads.prefixes]


def _ensure_notifications(s3: Any, bucket: str, wanted: list[dict[str, Any]]) -> None:
    """The bucket announces exactly `wanted` (S3 sets its configuration as a whole, so every
    queue of one bucket is set at once; unchanged, nothing is written)."""
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    if _comparable(current.get("QueueConfigurations", [])) != _comparable(wanted):
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": wanted})


def _comparable(configurations: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    # S3 answers with its own spelling of rule names ("Prefix") and in its own order.
    return sorted((c.get("Id"), c.get("QueueArn"), tuple(sorted(c.get("Events", []))),
                   tuple(sorted((r["Name"].lower(), r["Value"]) for r in
                                c.get("Filter", {}).get("Key", {}).get("FilterRules", []))))
                  for c in configurations)


def _ensure_platforms(sns: Any, topology: Topology) -> dict[str, str]:
    """SNS platform applications for mobile push (moto: placeholder credentials). On AWS they
    need the APNs certificate and the FCM key, so they are made with those, not here."""
    existing = {app["PlatformApplicationArn"].rsplit("/", 1)[-1]: app["PlatformApplicationArn"]
                for page in sns.get_paginator("list_platform_applications").paginate()
                for app in page["PlatformApplications"]}
    arns = {}
    for kind, platform in topology.push_platforms:
        name = f"asyncsns-{kind}"
        arns[kind] = existing.get(name) or sns.create_platform_application(
            Name=name, Platform=platform,
            Attributes={"PlatformCredential": "local", "PlatformPrincipal": "local"},
        )["PlatformApplicationArn"]
    return arns


def let_the_gateway_read(s3: Any, bucket: str) -> None:
    """Locally the gateway plays the CDN and reads variants without credentials; on AWS the
    bucket stays private and CloudFront reads it with origin access control (CDK)."""
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "gateway-reads-media", "Effect": "Allow", "Principal": "*",
                       "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/media/*"}],
    }))


def _allow_browser_uploads(s3: Any, bucket: str) -> None:
    """Browsers post their files straight to the uploads bucket (a presigned POST): CORS."""
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [{
        "AllowedMethods": ["POST"], "AllowedOrigins": ["*"], "AllowedHeaders": ["*"],
        "MaxAgeSeconds": 3600}]})


def _ensure_subscription(sns: Any, topic_arn: str, queue_arn: str, sub: Subscription) -> None:
    pages = sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn)
    existing = [s["SubscriptionArn"] for page in pages for s in page["Subscriptions"]
                if s["Protocol"] == "sqs" and s["Endpoint"] == queue_arn]
    arn = existing[0] if existing else sns.subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn,
        ReturnSubscriptionArn=True)["SubscriptionArn"]
    # The relay sets the event_type message attribute; the filter matches on it.
    wanted = {"RawMessageDelivery": "true"}
    if sub.filter_policy is not None:
        wanted["FilterPolicy"] = json.dumps(sub.filter_policy)
    current = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
    for name, value in wanted.items():
        if current.get(name) != value:
            sns.set_subscription_attributes(SubscriptionArn=arn, AttributeName=name,
                                            AttributeValue=value)


def _ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except s3.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            raise
    extra = {} if region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **extra)


def _ensure_user_pool(idp: Any, topology: Topology) -> tuple[str, str]:
    wanted = topology.user_pool
    pools = [p for page in idp.get_paginator("list_user_pools").paginate(MaxResults=60)
             for p in page["UserPools"] if p["Name"] == wanted.name]
    if pools:
        pool_id = pools[0]["Id"]
    else:
        pool_id = idp.create_user_pool(
            PoolName=wanted.name, Policies={"PasswordPolicy": wanted.password_policy},
            AutoVerifiedAttributes=["email"])["UserPool"]["Id"]
    clients = [c for page in idp.get_paginator("list_user_pool_clients").paginate(
        UserPoolId=pool_id, MaxResults=60) for c in page["UserPoolClients"]
        if c["ClientName"] == wanted.client]
    if clients:
        return pool_id, clients[0]["ClientId"]
    client = idp.create_user_pool_client(UserPoolId=pool_id, ClientName=wanted.client,
                                         GenerateSecret=False, ExplicitAuthFlows=AUTH_FLOWS)
    return pool_id, client["UserPoolClient"]["ClientId"]


def service_env(outputs: dict[str, Any], service_name: str, *, database_url: str,
                redis_url: str | None, endpoint_url: str | None,
                topology: Topology = TOPOLOGY, log_json: bool = True,
                search_url: str | None = None, public_url: str | None = None,
                worker: str | None = None, serve_only: bool = False, relays: bool = True,
                vapid: tuple[str, str] | None = None) -> dict[str, str]:
    """The environment one service process (or one of its workers) reads into its settings.

    `public_url` is where clients reach the gateway: media URLs and, without a real S3,
    upload forms point there. `serve_only`: a process that only serves requests. Not
    `relays`: a process that stages events but leaves publishing them to another process
    of its service (no topic: no relay).
    """
    service = topology.service(service_name)
    queues = [s.queue for s in service.subscriptions if not s.archive]
    if worker is not None:
        queues = [u.queue for u in next(w for w in service.workers if w.name == worker).uploads]
    env = {
        "SERVICE_NAME": service_name,
        "DATABASE_URL": database_url,
        "AWS_REGION": outputs["region"],
        "CONSUME_QUEUES": json.dumps(queues),
        "COGNITO_ISSUER": outputs["issuer"],
        "COGNITO_JWKS_URL": outputs["jwks_url"],
        "COGNITO_CLIENT_ID": outputs["client_id"],
        "COGNITO_USER_POOL_ID": outputs["user_pool_id"],
        "LOG_JSON": "true" if log_json else "false",
    }
    if serve_only:
        env["SERVE_ONLY"] = "true"
    if redis_url:
        env["REDIS_URL"] = redis_url
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
        env.update({key.upper(): value for key, value in LOCAL_CREDENTIALS.items()})
    if service.topic and relays:
        env["EVENTS_TOPIC_ARN"] = outputs["topics"][service_name]
    if public_url:
        env["PUBLIC_URL"] = public_url.rstrip("/")
    if service.needs_media:
        env.update(_media_env(topology, service, public_url, local=bool(endpoint_url)))
    if service.needs_push:
        platforms = outputs.get("push_platforms", {})
        env.update({f"{kind.upper()}_PLATFORM_ARN": arn for kind, arn in platforms.items()})
        if endpoint_url:  # local: test receivers may listen on loopback
            env["ALLOW_PRIVATE_PUSH_ENDPOINTS"] = "true"
        if vapid:
            env.update({"VAPID_PRIVATE_KEY": vapid[0], "VAPID_PUBLIC_KEY": vapid[1]})
    archive = [s.queue for s in service.subscriptions if s.archive and worker is None]
    if archive:
        env["ARCHIVE_QUEUES"] = json.dumps(archive)
        env["ARCHIVE_BUCKET"] = topology.archive_bucket
    if search_url:
        env["SEARCH_URL"] = search_url
    return env


def _media_env(topology: Topology, service: Service, public_url: str | None, *,
               local: bool) -> dict[str, str]:
    env = {"UPLOADS_BUCKET": topology.uploads_bucket, "MEDIA_BUCKET": topology.media_bucket}
    if public_url:
        base = public_url.rstrip("/")
        env["MEDIA_BASE_URL"] = base + MEDIA_PATH.rstrip("/")
        # Clients' uploads (moto is not reachable by them: the gateway passes uploads on).
        if local and any(w.uploads for w in service.workers):
            env["UPLOAD_ENDPOINT_URL"] = base + UPLOADS_PATH.rstrip("/")
    return env


def main(argv: list[str] | None = None) -> None:
    """`asyncsns-provision [--endpoint URL] [--region R] [--out FILE]`"""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", help="moto's URL; leave out for real AWS")
    parser.add_argument("--region", default=TOPOLOGY.region)
    parser.add_argument("--out", type=Path, help="write the outputs here as well as to stdout")
    args = parser.parse_args(argv)
    outputs = provision(TOPOLOGY, args.endpoint, args.region)
    text = json.dumps(outputs, indent=2, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
