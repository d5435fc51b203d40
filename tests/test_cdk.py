"""The AWS deployment (deploy/cdk): synthesized once, offline and without Docker, then read
as CloudFormation. What the topology declares must be there, derived rather than restated;
every role must hold only what its service calls; cdk-nag must pass, each exception with
its reason."""

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "cdk"))

from asyncsns_cdk import boot, plan  # noqa: E402
from asyncsns_cdk.app import build_app  # noqa: E402
from asyncsns_cdk.data import analysis_plugins_needed  # noqa: E402
from aws_cdk import App  # noqa: E402
from aws_cdk.assertions import Match, Template  # noqa: E402

from stack.gateway import problem_body  # noqa: E402
from stack.provision import service_env  # noqa: E402
from stack.topology import TOPOLOGY  # noqa: E402

FCM_PLATFORM = "arn:aws:sns:us-east-1:123456789012:app/GCM/asyncsns-fcm"
PUSH_ENDPOINTS = "arn:aws:sns:us-east-1:123456789012:endpoint/GCM/asyncsns-fcm/*"
# Services whose data a wildcard action would open wider than the code needs.
DATA_STORES = ("s3", "sqs", "sns", "dynamodb", "rds", "rds-data", "rds-db", "es",
               "elasticache", "secretsmanager", "kms", "kinesisvideo", "cognito-idp")
STACKS = ("Network", "Data", "Messaging", "Storage", "Auth", "Calls", "Waf", "Edge",
          "Services", "Observability")


@dataclass
class Deployment:
    """The synthesized cloud assembly."""

    outdir: Path

    def raw(self, stack: str) -> dict[str, Any]:
        return json.loads((self.outdir / f"{stack}.template.json").read_text())

    def template(self, stack: str) -> Template:
        return Template.from_json(self.raw(stack))

    def resources(self, stack: str, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.raw(stack)["Resources"].items() if v["Type"] == kind}

    def target(self, stack: str, value: Any) -> tuple[str, str]:
        """(stack, logical id) of what a Ref, GetAtt or another stack's export points at."""
        if "Ref" in value:
            return stack, value["Ref"]
        if "Fn::GetAtt" in value:
            return stack, value["Fn::GetAtt"][0]
        export = value["Fn::ImportValue"]
        for other in STACKS:
            for output in self.raw(other).get("Outputs", {}).values():
                if output.get("Export", {}).get("Name") == export:
                    return self.target(other, output["Value"])
        raise KeyError(export)

    def named(self, stack: str, value: Any, name_property: str) -> str:
        """The physical name (QueueName, TopicName, …) of what `value` points at."""
        where, logical = self.target(stack, value)
        return self.raw(where)["Resources"][logical]["Properties"][name_property]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Deployment:
    outdir = tmp_path_factory.mktemp("cdk.out")
    # Asset staging would copy the repository once per image; synthesis reads it in place.
    context = json.loads((ROOT / "deploy" / "cdk.json").read_text())["context"]
    app = App(outdir=str(outdir), context={**context, "aws:cdk:disable-asset-staging": True,
                                           "fcmPlatformArn": FCM_PLATFORM})
    build_app(app).synth()
    return Deployment(outdir)


def queue_names(d: Deployment) -> dict[str, dict[str, Any]]:
    """QueueName -> (logical id, properties) of every queue."""
    return {props["Properties"]["QueueName"]: {"id": k, **props["Properties"]}
            for k, props in d.resources("Messaging", "AWS::SQS::Queue").items()}


# --- messaging ---------------------------------------------------------------------------

def test_every_topology_queue_has_a_dlq_that_outlives_it(deployment):
    queues = queue_names(deployment)
    by_id = {q["id"]: name for name, q in queues.items()}
    pairs = plan.queues(TOPOLOGY)
    assert set(pairs) == {s.queue for s in TOPOLOGY.subscriptions} | {
        u.queue for u in TOPOLOGY.uploads}
    for queue, dlq in pairs.items():
        redrive = queues[queue]["RedrivePolicy"]
        assert by_id[redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]] == dlq
        assert redrive["maxReceiveCount"] == TOPOLOGY.max_receive_count
        assert queues[queue]["VisibilityTimeout"] == TOPOLOGY.visibility_timeout_s
        assert queues[dlq]["MessageRetentionPeriod"] > queues[queue]["MessageRetentionPeriod"]
    for name in plan.plain_queues(TOPOLOGY):
        assert queues[name]["MessageRetentionPeriod"] == TOPOLOGY.dlq_retention_s
    assert set(queues) == set(pairs) | set(pairs.values()) | set(plan.plain_queues(TOPOLOGY))


def test_every_subscription_filters_on_event_type_with_raw_delivery(deployment):
    subs = deployment.resources("Messaging", "AWS::SNS::Subscription").values()
    found = {deployment.named("Messaging", s["Properties"]["Endpoint"], "QueueName"):
             s["Properties"] for s in subs}
    assert set(found) == {s.queue for s in TOPOLOGY.subscriptions}
    for sub in TOPOLOGY.subscriptions:
        props = found[sub.queue]
        assert props["Protocol"] == "sqs" and props["RawMessageDelivery"] is True
        topic = deployment.named("Messaging", props["TopicArn"], "TopicName")
        assert topic in (sub.topic, f"{sub.topic}-events")
        if sub.archive:
            assert "FilterPolicy" not in props
        else:
            assert props["FilterPolicy"] == sub.filter_policy


def test_queues_take_messages_from_their_one_source_only(deployment):
    policies = deployment.resources("Messaging", "AWS::SQS::QueuePolicy").values()
    sources: dict[str, list] = {}
    for policy in policies:
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] != "Allow":
                continue
            for queue in policy["Properties"]["Queues"]:
                name = deployment.named("Messaging", queue, "QueueName")
                sources.setdefault(name, []).append(statement)
    for sub in TOPOLOGY.subscriptions:
        [statement] = sources[sub.queue]
        assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
        assert statement["Action"] == "sqs:SendMessage"
        topic = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
        assert deployment.named("Messaging", topic, "TopicName").startswith(sub.topic)
    for uploads in TOPOLOGY.uploads:
        [statement] = sources[uploads.queue]
        assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
        bucket = json.dumps(statement["Condition"]["ArnEquals"]["aws:SourceArn"])
        assert uploads.bucket in bucket


def test_the_uploads_bucket_announces_each_prefix_on_the_media_queue(deployment):
    buckets = deployment.resources("Storage", "AWS::S3::Bucket").values()
    [uploads] = [b for b in buckets if "NotificationConfiguration" in b["Properties"]]
    configurations = uploads["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    [declared] = TOPOLOGY.uploads
    assert TOPOLOGY.uploads_bucket in json.dumps(uploads["Properties"]["BucketName"])
    assert sorted(c["Filter"]["S3Key"]["Rules"][0]["Value"] for c in configurations) == sorted(
        declared.prefixes)
    for c in configurations:
        assert c["Event"] == "s3:ObjectCreated:*"
        assert deployment.named("Storage", c["Queue"], "QueueName") == declared.queue


# --- edge ---------------------------------------------------------------------------------

def test_every_route_of_the_gateway_is_an_alb_listener_rule(deployment):
    rules = deployment.resources("Services", "AWS::ElasticLoadBalancingV2::ListenerRule")
    groups = {k: k for k in deployment.resources(
        "Services", "AWS::ElasticLoadBalancingV2::TargetGroup")}
    found = {}
    for rule in rules.values():
        props = rule["Properties"]
        conditions = {c["Field"]: c for c in props["Conditions"]}
        [pattern] = conditions["path-pattern"]["PathPatternConfig"]["Values"]
        methods = tuple(conditions.get("http-request-method", {}).get(
            "HttpRequestMethodConfig", {}).get("Values", ()))
        [action] = props["Actions"]
        group = groups[action["TargetGroupArn"]["Ref"]]
        found[(pattern, methods)] = (props["Priority"], group)
    routes = plan.routes(TOPOLOGY)
    declared = {path for s in TOPOLOGY.services for _, path in s.path_routes}
    assert {r.path for r in routes} == declared
    assert len(found) == len(routes) == len(rules)
    for route in routes:
        priority, group = found[(f"{route.path}*", route.methods)]
        assert priority == route.priority
        assert group.startswith(plan.construct_id(route.service) + "Targets")
    # WebSocket paths are routed like any other (the ALB upgrades them itself).
    assert {"/ws/chat*", "/ws/calls/*"} <= {pattern for pattern, _ in found}
    # As in nginx: reads of /api/posts go to the query service, everything else to post.
    assert found[("/api/posts*", ("GET", "HEAD"))][0] < found[("/api/posts*", ())][0]


def test_routes_are_tried_longest_prefix_first_like_the_gateway():
    routes = plan.routes(TOPOLOGY)
    assert [r.priority for r in routes] == sorted(r.priority for r in routes)
    assert [len(r.path) for r in routes] == sorted((len(r.path) for r in routes), reverse=True)
    reads = next(r for r in routes if r.path == "/api/posts" and r.methods)
    assert (reads.service, reads.methods) == ("query", ("GET", "HEAD"))
    assert [r.websocket for r in routes if r.path.startswith("/ws/")] == [True, True]


def test_the_alb_is_internal_outlasts_websocket_pings_and_answers_404_otherwise(deployment):
    edge = deployment.template("Edge")
    edge.has_resource_properties("AWS::ElasticLoadBalancingV2::LoadBalancer", {
        "Scheme": "internal",
        "LoadBalancerAttributes": Match.array_with([
            {"Key": "idle_timeout.timeout_seconds", "Value": "120"},
            {"Key": "routing.http.drop_invalid_header_fields.enabled", "Value": "true"},
            {"Key": "access_logs.s3.enabled", "Value": "true"}]),
    })
    edge.has_resource_properties("AWS::ElasticLoadBalancingV2::Listener", {
        "DefaultActions": [{"Type": "fixed-response", "FixedResponseConfig": {
            "StatusCode": "404", "ContentType": "application/problem+json",
            "MessageBody": problem_body(404)}}]})


def test_cloudfront_is_https_only_behind_waf_and_serves_media_with_oac(deployment):
    [dist] = deployment.resources("Edge", "AWS::CloudFront::Distribution").values()
    config = dist["Properties"]["DistributionConfig"]
    behaviors = [config["DefaultCacheBehavior"], *config["CacheBehaviors"]]
    assert {b["ViewerProtocolPolicy"] for b in behaviors} == {"https-only"}
    origins = {o["Id"]: o for o in config["Origins"]}
    [media] = config["CacheBehaviors"]
    assert media["PathPattern"] == "/media/*"
    assert "OriginAccessControlId" in origins[media["TargetOriginId"]]
    assert "VpcOriginConfig" in origins[config["DefaultCacheBehavior"]["TargetOriginId"]]
    assert deployment.target("Edge", config["WebACLId"])[0] == "Waf"
    waf = deployment.template("Waf")
    waf.has_resource_properties("AWS::WAFv2::WebACL", {
        "Scope": "CLOUDFRONT",
        "Rules": Match.array_with([
            Match.object_like({"Statement": {"ManagedRuleGroupStatement": Match.object_like(
                {"Name": "AWSManagedRulesCommonRuleSet", "VendorName": "AWS"})}}),
            Match.object_like({"Statement": {"RateBasedStatement": Match.object_like(
                {"AggregateKeyType": "IP"})}})]),
    })


# --- services -----------------------------------------------------------------------------

def task_definitions(d: Deployment) -> dict[str, dict[str, Any]]:
    return {props["Properties"]["Family"].removeprefix("asyncsns-"): props["Properties"]
            for props in d.resources("Services", "AWS::ECS::TaskDefinition").values()}


def test_every_service_and_worker_has_a_task_with_health_checks_and_rollback(deployment):
    definitions = task_definitions(deployment)
    tasks = plan.tasks(TOPOLOGY)
    assert set(definitions) == {t.name for t in tasks} and "media-worker" in definitions
    services = {s["Properties"]["ServiceName"]: s["Properties"]
                for s in deployment.resources("Services", "AWS::ECS::Service").values()}
    groups = deployment.resources("Services", "AWS::ElasticLoadBalancingV2::TargetGroup")
    for task in tasks:
        containers = {c["Name"]: c for c in definitions[task.name]["ContainerDefinitions"]}
        app = containers["app"]
        assert "/healthz" in " ".join(app["HealthCheck"]["Command"])
        assert app["Command"][-7:] == ["uvicorn", "--factory", task.app, "--host", "0.0.0.0",
                                       "--port", "8000"]
        assert containers["adot-collector"]["Essential"] is False
        service = services[task.name]
        assert service["DesiredCount"] == task.replicas
        assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
            "Enable": True, "Rollback": True}
        assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == \
            "DISABLED"
        if task.serves_http:
            [group] = [g for k, g in groups.items()
                       if k.startswith(plan.construct_id(task.name) + "Targets")]
            assert group["Properties"]["HealthCheckPath"] == "/readyz"
            attributes = {a["Key"]: a["Value"]
                          for a in group["Properties"]["TargetGroupAttributes"]}
            assert attributes["load_balancing.algorithm.type"] == "least_outstanding_requests"
        else:
            assert "LoadBalancers" not in service


def test_every_task_scales_on_cpu_and_consumers_on_their_backlog(deployment):
    targets = deployment.resources("Services", "AWS::ApplicationAutoScaling::ScalableTarget")
    policies = deployment.resources("Services", "AWS::ApplicationAutoScaling::ScalingPolicy")
    for task in plan.tasks(TOPOLOGY):
        [(target_id, target)] = [(k, t) for k, t in targets.items()
                                 if k.startswith(plan.construct_id(task.name) + "Service")]
        assert target["Properties"]["MinCapacity"] == task.replicas
        assert target["Properties"]["MaxCapacity"] >= task.replicas
        mine = [p["Properties"] for p in policies.values()
                if p["Properties"]["ScalingTargetId"] == {"Ref": target_id}]
        tracking = [p for p in mine if p["PolicyType"] == "TargetTrackingScaling"]
        assert tracking[0]["TargetTrackingScalingPolicyConfiguration"][
            "PredefinedMetricSpecification"]["PredefinedMetricType"] == \
            "ECSServiceAverageCPUUtilization"
        steps = [p for p in mine if p["PolicyType"] == "StepScaling"]
        assert bool(steps) == bool(task.queues), task.name
    # The backlog is the queues' visible messages, summed over the task's queues.
    alarms = deployment.resources("Services", "AWS::CloudWatch::Alarm").values()
    backlog = [a for a in alarms if "Metrics" in a["Properties"]]
    metrics = {m["MetricStat"]["Metric"]["MetricName"] for a in backlog
               for m in a["Properties"]["Metrics"] if "MetricStat" in m}
    assert metrics == {"ApproximateNumberOfMessagesVisible"}


def container_env(definition: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    app = next(c for c in definition["ContainerDefinitions"] if c["Name"] == "app")
    return ({e["Name"]: e["Value"] for e in app["Environment"]},
            {s["Name"] for s in app.get("Secrets", [])})


def test_each_container_gets_what_service_env_gives_it_locally(deployment):
    outputs = {"region": "r", "topics": {s.name: "t" for s in TOPOLOGY.services},
               "issuer": "i", "jwks_url": "j", "client_id": "c", "user_pool_id": "p",
               "push_platforms": {"fcm": FCM_PLATFORM}}
    definitions = task_definitions(deployment)
    for task in plan.tasks(TOPOLOGY):
        service = task.service
        expected = service_env(outputs, service.name, database_url="db", redis_url="redis",
                               endpoint_url=None, public_url="https://x",
                               search_url="s" if service.needs_search else None,
                               vapid=("a", "b") if service.needs_push else None,
                               worker=task.worker.name if task.worker else None)
        env, secrets = container_env(definitions[task.name])
        made_at_start = {url for url, parts in boot.URL_PARTS.items()
                         if set(parts["secret"]) <= secrets
                         and set(parts.get("plain", ())) <= set(env)}
        assert set(expected) <= set(env) | secrets | made_at_start, task.name
        assert not {k for k in env if "PASSWORD" in k or "TOKEN" in k or k.endswith("_URL")
                    and k in boot.URL_PARTS}
        for key in ("SERVICE_NAME", "CONSUME_QUEUES", "ARCHIVE_QUEUES", "LOG_JSON"):
            assert env.get(key) == expected.get(key), (task.name, key)


def test_boot_makes_urls_from_secret_parts_and_drops_the_parts():
    parts = {"DB_USERNAME": "profile", "DB_PASSWORD": "p@ss:w/rd%", "DB_HOST": "db.local",
             "DB_PORT": "5432", "DB_NAME": "profile", "REDIS_AUTH_TOKEN": "t0ken",
             "REDIS_HOST": "redis.local", "REDIS_PORT": "6379"}
    show = "import json, os; print(json.dumps(dict(os.environ)))"
    out = subprocess.run([sys.executable, "-c", boot.BOOT, sys.executable, "-c", show],
                         env={**parts, "PATH": os.environ["PATH"]}, capture_output=True,
                         text=True, check=True).stdout
    env = json.loads(out)
    assert env["DATABASE_URL"] == (
        "postgresql+asyncpg://profile:p%40ss%3Aw%2Frd%25@db.local:5432/profile?ssl=require")
    assert env["REDIS_URL"] == "rediss://:t0ken@redis.local:6379/0"
    assert "SEARCH_URL" not in env and not set(parts) & set(env)


def policy_statements(d: Deployment, stack: str) -> dict[str, list[dict[str, Any]]]:
    """Role logical id -> its inline policies' statements."""
    found: dict[str, list] = {}
    for policy in d.resources(stack, "AWS::IAM::Policy").values():
        for role in policy["Properties"].get("Roles", []):
            found.setdefault(role["Ref"], []).extend(
                policy["Properties"]["PolicyDocument"]["Statement"])
    return found


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def test_no_role_holds_a_wildcard_action_on_a_data_store(deployment):
    for stack in STACKS:
        for role, statements in policy_statements(deployment, stack).items():
            for statement in statements:
                for action in as_list(statement["Action"]):
                    service, _, name = action.partition(":")
                    assert not (action == "*" or (service in DATA_STORES and "*" in name)), (
                        stack, role, action)


def task_role_grants(d: Deployment, task: plan.Task) -> dict[str, set[str]]:
    """Action -> the physical names (or logical ids) of what the task role may do it on."""
    definition = next(p["Properties"] for p in d.resources(
        "Services", "AWS::ECS::TaskDefinition").values()
        if p["Properties"]["Family"] == f"asyncsns-{task.name}")
    role = definition["TaskRoleArn"]["Fn::GetAtt"][0]
    grants: dict[str, set[str]] = {}
    for statement in policy_statements(d, "Services")[role]:
        for resource in as_list(statement["Resource"]):
            if isinstance(resource, str):
                what = resource
            elif "Fn::Join" in resource:
                parts = resource["Fn::Join"][1]
                where, logical = d.target("Services", parts[0])
                what = f"{logical}{''.join(p for p in parts[1:] if isinstance(p, str))}"
            else:
                where, logical = d.target("Services", resource)
                props = d.raw(where)["Resources"][logical]["Properties"]
                what = props.get("QueueName") or props.get("TopicName") or logical
            for action in as_list(statement["Action"]):
                grants.setdefault(action, set()).add(what)
    return grants


def test_each_task_role_holds_only_what_its_code_calls(deployment):
    dlqs = plan.queues(TOPOLOGY)
    for task in plan.tasks(TOPOLOGY):
        grants = task_role_grants(deployment, task)
        service = task.service
        own = set(task.queues) | (set(service.queues) if not task.worker else set())
        assert grants["sqs:ReceiveMessage"] == own, task.name
        assert grants["sqs:GetQueueAttributes"] == own | {dlqs[q] for q in task.queues}
        topics = grants.get("sns:Publish", set()) - {PUSH_ENDPOINTS}
        assert topics == ({service.topic} if service.topic else set()), task.name
        assert (PUSH_ENDPOINTS in grants.get("sns:Publish", ())) == service.needs_push
        assert ("cognito-idp:AdminDeleteUser" in grants) == service.needs_cognito_admin
        objects = {what for action, whats in grants.items() if action.startswith("s3:")
                   for what in whats}
        expected = {
            "post": {"Uploads/originals/*"},
            "media-worker": {"Uploads/originals/*", "Uploads/recordings/*", "Media/media/*"},
            "call": {"Uploads/recordings/*", "Media/media/live/*"},
            "query": {"Archive/*", "Archive"},
        }.get(task.name, set())
        assert {_strip_hash(o) for o in objects} == expected, task.name
        assert ("kinesisvideo:GetIceServerConfig" in grants) == (task.name == "call")
        assert ("sns:CreatePlatformEndpoint" in grants) == service.needs_push
        assert not {a for a in grants if a.startswith(("secretsmanager:", "rds", "es:"))}


def _strip_hash(what: str) -> str:
    # "Uploads4F6EB0FD/originals/*" -> "Uploads/originals/*"
    head, slash, tail = what.partition("/")
    return head[:-8] + slash + tail


# --- storage, data, auth --------------------------------------------------------------------

def test_buckets_are_private_encrypted_and_tls_only(deployment):
    buckets = deployment.resources("Storage", "AWS::S3::Bucket")
    assert len(buckets) == len(TOPOLOGY.buckets) + 1  # and the access-log bucket
    for bucket in buckets.values():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True}
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    policies = deployment.resources("Storage", "AWS::S3::BucketPolicy").values()
    assert len(policies) == len(buckets)
    for policy in policies:
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(s["Effect"] == "Deny" and s["Condition"] == {
            "Bool": {"aws:SecureTransport": "false"}} for s in statements)
        for s in statements:
            if s["Effect"] == "Allow":
                assert s["Principal"] != "*" and s["Principal"] != {"AWS": "*"}


def test_stores_and_messages_are_encrypted(deployment):
    for queue in deployment.resources("Messaging", "AWS::SQS::Queue").values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True
    for stack in ("Messaging", "Observability"):
        for topic in deployment.resources(stack, "AWS::SNS::Topic").values():
            assert "KmsMasterKeyId" in topic["Properties"]
    data = deployment.template("Data")
    data.has_resource_properties("AWS::RDS::DBCluster", {
        "StorageEncrypted": True, "Engine": "aurora-postgresql", "EnableHttpEndpoint": True,
        "ServerlessV2ScalingConfiguration": Match.any_value()})
    data.has_resource_properties("AWS::ElastiCache::ReplicationGroup", {
        "TransitEncryptionEnabled": True, "AtRestEncryptionEnabled": True,
        "AuthToken": Match.any_value(), "MultiAZEnabled": True})
    data.has_resource_properties("AWS::OpenSearchService::Domain", {
        "EncryptionAtRestOptions": {"Enabled": True},
        "NodeToNodeEncryptionOptions": {"Enabled": True},
        "DomainEndpointOptions": Match.object_like({"EnforceHTTPS": True})})
    for group in deployment.resources("Services", "AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"] > 0


def test_each_service_has_its_own_database_and_rotated_credentials(deployment):
    data = deployment.raw("Data")["Resources"]
    secrets = [r["Properties"] for r in data.values() if r["Type"] == "AWS::SecretsManager::Secret"]
    for service in TOPOLOGY.services:
        [secret] = [s for s in secrets if s.get("Name") == f"asyncsns/{service.name}/database"]
        assert f'{{\\"username\\":\\"{service.name}\\"' in json.dumps(secret)
    rotations = [r for r in data.values() if r["Type"] == "AWS::SecretsManager::RotationSchedule"]
    assert len(rotations) == len(TOPOLOGY.services) + 1  # and the admin's
    [users] = [r["Properties"] for r in data.values() if r["Type"] == "Custom::ServiceDatabases"]
    assert [s["Name"] for s in users["Services"]] == [s.name for s in TOPOLOGY.services]
    # No task reads another service's database secret.
    for task in plan.tasks(TOPOLOGY):
        definition = task_definitions(deployment)[task.name]
        app = next(c for c in definition["ContainerDefinitions"] if c["Name"] == "app")
        [secret] = {json.dumps(s["ValueFrom"]) for s in app["Secrets"]
                    if s["Name"] == "DB_PASSWORD"}
        assert plan.construct_id(task.service.name) + "DbSecret" in secret


def test_the_search_index_settings_need_no_plugin():
    assert analysis_plugins_needed() == set()


def test_the_user_pool_and_client_are_what_services_verify(deployment):
    auth = deployment.template("Auth")
    auth.has_resource_properties("AWS::Cognito::UserPool", {
        "UserPoolName": TOPOLOGY.user_pool.name,
        "Policies": {"PasswordPolicy": Match.object_like(
            {"MinimumLength": TOPOLOGY.user_pool.password_min_length})}})
    auth.has_resource_properties("AWS::Cognito::UserPoolClient", {
        "ClientName": TOPOLOGY.user_pool.client, "GenerateSecret": False,
        "ExplicitAuthFlows": Match.array_with(["ALLOW_USER_PASSWORD_AUTH",
                                               "ALLOW_REFRESH_TOKEN_AUTH"])})
    env, _ = container_env(task_definitions(deployment)["profile"])
    assert deployment.target("Services", env["COGNITO_CLIENT_ID"])[0] == "Auth"
    assert "cognito-idp." in json.dumps(env["COGNITO_ISSUER"])


def test_images_come_from_each_services_dockerfile_with_the_repo_as_context(deployment):
    assets = json.loads((deployment.outdir / "Services.assets.json").read_text())
    sources = {a["source"]["dockerFile"]: a["source"]["directory"]
               for a in assets["dockerImages"].values()}
    assert sources == {f"services/{s.name}/Dockerfile": str(ROOT) for s in TOPOLOGY.services}


# --- observability, cdk-nag -------------------------------------------------------------------

def test_alarms_watch_5xx_latency_dlqs_and_queue_age(deployment):
    alarms = [a["Properties"] for a in deployment.resources(
        "Observability", "AWS::CloudWatch::Alarm").values()]
    by_metric: dict[str, int] = {}
    for alarm in alarms:
        by_metric[alarm["MetricName"]] = by_metric.get(alarm["MetricName"], 0) + 1
        assert alarm["AlarmActions"]
    http = [t for t in plan.tasks(TOPOLOGY) if t.serves_http]
    pairs = plan.queues(TOPOLOGY)
    assert by_metric["HTTPCode_Target_5XX_Count"] == len(http)
    assert by_metric["TargetResponseTime"] == len(http)
    assert by_metric["ApproximateNumberOfMessagesVisible"] == len(pairs) + len(
        plan.plain_queues(TOPOLOGY))
    assert by_metric["ApproximateAgeOfOldestMessage"] == len(pairs)
    assert any(a.get("ExtendedStatistic") == "p99" for a in alarms)
    deployment.template("Observability").resource_count_is("AWS::CloudWatch::Dashboard", 1)


def test_cdk_nag_passes_and_every_exception_has_a_reason(deployment):
    rows = [row for report in deployment.outdir.glob("AwsSolutions-*-NagReport.csv")
            for row in csv.DictReader(report.open())]
    assert rows
    failing = [(r["Rule ID"], r["Resource ID"]) for r in rows
               if r["Compliance"] not in ("Compliant", "Suppressed")]
    assert failing == []
    suppressed = [r for r in rows if r["Compliance"] == "Suppressed"]
    assert suppressed and all(len(r["Exception Reason"]) > 40 for r in suppressed)
    errors = [entry["data"] for meta in deployment.outdir.glob("*.metadata.json")
              for entries in json.loads(meta.read_text()).values() for entry in entries
              if entry["type"] == "aws:cdk:error"]
    assert errors == []


# --- the database custom resource's function --------------------------------------------------

class FakeRdsData:
    """The Data API as far as the function uses it: records statements, answers lookups."""

    def __init__(self, existing: set[str]):
        self.existing, self.statements = existing, []

    def execute_statement(self, *, sql, parameters, **_):
        self.statements.append(sql)
        if sql.startswith("SELECT"):
            name = parameters[0]["value"]["stringValue"]
            table = "pg_roles" if "pg_roles" in sql else "pg_database"
            return {"records": [[{"longValue": 1}]] if f"{table}:{name}" in self.existing
                    else []}
        return {}


class FakeSecrets:
    def get_secret_value(self, SecretId):  # noqa: N803 (boto3's spelling)
        return {"SecretString": json.dumps({"username": "chat", "password": "it's"})}


@pytest.fixture
def db_users(monkeypatch):
    import importlib.util

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    path = ROOT / "deploy/cdk/asyncsns_cdk/db_users/index.py"
    spec = importlib.util.spec_from_file_location("db_users_index", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "secrets", FakeSecrets())
    return module


def test_a_new_service_gets_a_role_owning_its_own_database(db_users, monkeypatch):
    rds = FakeRdsData(existing=set())
    monkeypatch.setattr(db_users, "rds", rds)
    db_users.ensure_service("cluster", "admin", "chat", "secret")
    changes = [s for s in rds.statements if not s.startswith("SELECT")]
    assert changes == [
        'CREATE ROLE "chat" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD \'it\'\'s\'',
        'GRANT "chat" TO CURRENT_USER',
        'CREATE DATABASE "chat" OWNER "chat"',
        'REVOKE ALL ON DATABASE "chat" FROM PUBLIC',
    ]


def test_an_existing_service_keeps_its_database_and_gets_its_current_password(db_users,
                                                                              monkeypatch):
    rds = FakeRdsData(existing={"pg_roles:chat", "pg_database:chat"})
    monkeypatch.setattr(db_users, "rds", rds)
    db_users.ensure_service("cluster", "admin", "chat", "secret")
    changes = [s for s in rds.statements if not s.startswith("SELECT")]
    assert changes[0].startswith('ALTER ROLE "chat" WITH LOGIN')
    assert not [s for s in changes if s.startswith("CREATE DATABASE")]


def test_the_function_reports_failure_to_cloudformation_instead_of_hanging(db_users,
                                                                            monkeypatch):
    sent = []
    monkeypatch.setattr(db_users, "ensure_service",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("cluster asleep")))
    monkeypatch.setattr(db_users, "respond",
                        lambda event, context, status, reason: sent.append((status, reason)))
    event = {"RequestType": "Create", "ResourceProperties": {
        "ClusterArn": "c", "AdminSecretArn": "a", "Services": [{"Name": "chat",
                                                                "SecretArn": "s"}]}}
    db_users.handler(event, None)
    assert sent == [("FAILED", "RuntimeError: cluster asleep")]
    sent.clear()
    db_users.handler({**event, "RequestType": "Delete"}, None)
    assert sent == [("SUCCESS", "")]
