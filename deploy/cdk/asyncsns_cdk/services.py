"""Services: one Fargate service per service and per worker of the topology, each with the
environment stack.provision.service_env gives it locally, its secrets from Secrets Manager,
health checks, autoscaling, a rollback on failed deployments and a task role holding exactly
what its code calls. The ALB's listener rules come from the gateway's route table."""

import dataclasses
import json

from aws_cdk import Duration, IgnoreMode, RemovalPolicy, SecretValue, Stack
from aws_cdk import aws_applicationautoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from stack.gateway import WEBSOCKET_PREFIX
from stack.provision import service_env
from stack.topology import Topology

from . import boot, plan, tracing
from .access import grant_dlq_watch, grant_list, grant_objects, grant_publish
from .auth import AuthStack
from .calls import CallsStack
from .data import DB_PORT, REDIS_PORT, DataStack
from .edge import EdgeStack
from .media import MEDIA_ACCESS
from .messaging import MessagingStack
from .network import NetworkStack
from .settings import (
    CONTAINER_PORT,
    LIVENESS_PATH,
    READINESS_PATH,
    REPO_ROOT,
    DeploySettings,
)
from .storage import StorageStack

# (vCPU units, MiB) per task; ffmpeg and aiortc need more than the rest.
TASK_SIZE = {"media-worker": (1024, 2048), "call": (1024, 2048)}
DEFAULT_TASK_SIZE = (512, 1024)
# Messages waiting (summed over a task's queues) at which one more task, then three, start.
BACKLOG_STEPS = (100, 1000)
LIVENESS_PROBE = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen("
                  f"'http://127.0.0.1:{CONTAINER_PORT}{LIVENESS_PATH}', timeout=3)"]


@dataclasses.dataclass
class Deployed:
    """One task's pieces, for the observability stack and the tests."""

    task: plan.Task
    service: ecs.FargateService
    target_group: elbv2.ApplicationTargetGroup | None


class ServicesStack(Stack):
    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings,
                 topology: Topology, network: NetworkStack, data: DataStack,
                 messaging: MessagingStack, storage: StorageStack, auth: AuthStack,
                 calls: CallsStack, edge: EdgeStack, **kwargs):
        super().__init__(scope, id, **kwargs)
        self.settings, self.network, self.data = settings, network, data
        self.messaging, self.storage, self.auth, self.calls, self.edge = (
            messaging, storage, auth, calls, edge)
        self.cluster = ecs.Cluster(self, "Cluster", vpc=network.vpc,
                                   container_insights_v2=ecs.ContainerInsights.ENABLED)
        # The provisioner's outputs, as AWS has them; the buckets under their deployed names.
        self.outputs = {
            "region": self.region,
            "topics": {name: topic.topic_arn for name, topic in messaging.topics.items()},
            "issuer": auth.issuer, "jwks_url": auth.jwks_url,
            "client_id": auth.client.user_pool_client_id,
            "user_pool_id": auth.pool.user_pool_id,
            "push_platforms": settings.push_platforms,
        }
        self.topology = dataclasses.replace(
            topology, uploads_bucket=storage.uploads.bucket_name,
            media_bucket=storage.media.bucket_name, archive_bucket=storage.archive.bucket_name)
        self.vapid = secretsmanager.Secret(
            self, "Vapid", secret_name="asyncsns/notifier/vapid",
            description="Web Push key pair (stack.vapid format); empty: Web Push is off",
            secret_object_value={"private": SecretValue.unsafe_plain_text(""),
                                 "public": SecretValue.unsafe_plain_text("")})
        self.images = {s.name: ecs.ContainerImage.from_asset(
            str(REPO_ROOT), file=f"services/{s.name}/Dockerfile",
            ignore_mode=IgnoreMode.DOCKER, platform=ecr_assets.Platform.LINUX_AMD64)
            for s in topology.services}
        self.deployed = {task.name: self._deploy(task) for task in plan.tasks(topology)}
        for route in plan.routes(topology):
            conditions = [elbv2.ListenerCondition.path_patterns([route.path_pattern])]
            if route.methods:
                conditions.append(elbv2.ListenerCondition.http_request_methods(
                    list(route.methods)))
            elbv2.ApplicationListenerRule(
                self, f"Route{route.priority}", listener=edge.listener,
                priority=route.priority, conditions=conditions,
                action=elbv2.ListenerAction.forward(
                    [self.deployed[route.service].target_group]))

    def environment(self, task: plan.Task) -> dict[str, str]:
        """service_env's variables, less the URLs that carry credentials (boot.BOOT makes
        them from secrets), plus what only AWS has: the stores' hosts, TURN, the allowed
        WebSocket origin and where to send traces."""
        service = task.service
        env = service_env(self.outputs, service.name, database_url="", redis_url=None,
                          endpoint_url=None, topology=self.topology,
                          public_url=self.edge.public_url,
                          worker=task.worker.name if task.worker else None)
        del env["DATABASE_URL"]
        env.update({"REDIS_HOST": self.data.redis_host, "REDIS_PORT": str(REDIS_PORT)})
        if service.needs_search:
            env["SEARCH_HOST"] = self.data.search_host
        if service.needs_push:
            env["VAPID_SUBJECT"] = self.settings.vapid_subject
        if any(route.startswith(WEBSOCKET_PREFIX) for _, route in service.path_routes):
            # Browsers connect from the public origin only (native clients send no Origin).
            env["WS_ALLOWED_ORIGINS"] = json.dumps([self.edge.public_url])
        if service.name == "call":
            env.update(self.calls.ice_env)
        env.update(tracing.app_env(task.name))
        return env

    def secrets(self, task: plan.Task) -> dict[str, ecs.Secret]:
        service = task.service
        database = self.data.database_secrets[service.name]
        secrets = {name: ecs.Secret.from_secrets_manager(database, field)
                   for name, field in boot.DATABASE_FIELDS.items()}
        secrets["REDIS_AUTH_TOKEN"] = ecs.Secret.from_secrets_manager(
            self.data.redis_secret, "token")
        if service.needs_search:
            secrets.update({
                "SEARCH_USERNAME": ecs.Secret.from_secrets_manager(
                    self.data.search_secret, "username"),
                "SEARCH_PASSWORD": ecs.Secret.from_secrets_manager(
                    self.data.search_secret, "password")})
        if service.needs_push:
            secrets.update({
                "VAPID_PRIVATE_KEY": ecs.Secret.from_secrets_manager(self.vapid, "private"),
                "VAPID_PUBLIC_KEY": ecs.Secret.from_secrets_manager(self.vapid, "public")})
        return secrets

    def _deploy(self, task: plan.Task) -> Deployed:
        cid = plan.construct_id(task.name)
        cpu, memory = TASK_SIZE.get(task.name, DEFAULT_TASK_SIZE)
        definition = ecs.FargateTaskDefinition(
            self, f"{cid}Task", family=f"asyncsns-{task.name}", cpu=cpu,
            memory_limit_mib=memory, runtime_platform=ecs.RuntimePlatform(
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
                cpu_architecture=ecs.CpuArchitecture.X86_64))
        log_group = logs.LogGroup(
            self, f"{cid}Logs", log_group_name=f"/asyncsns/{task.name}",
            retention=_retention(self.settings.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY)
        definition.add_container(
            "app", image=self.images[task.service.name], command=boot.command(task.app),
            environment=self.environment(task), secrets=self.secrets(task),
            port_mappings=[ecs.PortMapping(container_port=CONTAINER_PORT)],
            health_check=ecs.HealthCheck(command=LIVENESS_PROBE, interval=Duration.seconds(15),
                                         timeout=Duration.seconds(5), retries=3,
                                         start_period=Duration.seconds(60)),
            logging=ecs.LogDrivers.aws_logs(stream_prefix="app", log_group=log_group),
            stop_timeout=Duration.seconds(30))
        tracing.add_collector(definition, log_group)
        sg = ec2.SecurityGroup(self, f"{cid}Sg", vpc=self.network.vpc,
                               description=f"asyncsns {task.name} tasks")
        self._allow(f"{cid}ToAurora", sg, self.data.db_sg, DB_PORT)
        self._allow(f"{cid}ToRedis", sg, self.data.redis_sg, REDIS_PORT)
        if task.service.needs_search:
            self._allow(f"{cid}ToOpenSearch", sg, self.data.search_sg, 443)
        service = ecs.FargateService(
            self, f"{cid}Service", cluster=self.cluster, task_definition=definition,
            service_name=task.name, desired_count=task.replicas,
            vpc_subnets=self.network.app_subnets, security_groups=[sg],
            min_healthy_percent=100, max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            health_check_grace_period=Duration.seconds(60) if task.serves_http else None)
        target_group = None
        if task.serves_http:
            self._allow(f"AlbTo{cid}", self.edge.alb_sg, sg, CONTAINER_PORT)
            target_group = elbv2.ApplicationTargetGroup(
                self, f"{cid}Targets", vpc=self.network.vpc, port=CONTAINER_PORT,
                protocol=elbv2.ApplicationProtocol.HTTP, target_type=elbv2.TargetType.IP,
                targets=[service], deregistration_delay=Duration.seconds(30),
                # as the local gateway balances (nginx least_conn): fewest requests in flight
                load_balancing_algorithm_type=(
                    elbv2.TargetGroupLoadBalancingAlgorithmType.LEAST_OUTSTANDING_REQUESTS),
                health_check=elbv2.HealthCheck(
                    path=READINESS_PATH, interval=Duration.seconds(15),
                    timeout=Duration.seconds(5), healthy_threshold_count=2,
                    unhealthy_threshold_count=3))
        self._scale(task, service)
        self._grant(task, definition.task_role)
        return Deployed(task, service, target_group)

    def _allow(self, id: str, source: ec2.ISecurityGroup, target: ec2.ISecurityGroup,
               port: int) -> None:
        """An ingress rule on `target` from `source`, made in this stack so that the data
        and edge stacks never refer to the services' security groups."""
        ec2.CfnSecurityGroupIngress(
            self, id, group_id=target.security_group_id, description=id,
            source_security_group_id=source.security_group_id, ip_protocol="tcp",
            from_port=port, to_port=port)

    def _scale(self, task: plan.Task, service: ecs.FargateService) -> None:
        scaling = service.auto_scale_task_count(
            min_capacity=task.replicas, max_capacity=max(self.settings.max_tasks, task.replicas))
        scaling.scale_on_cpu_utilization("Cpu", target_utilization_percent=60,
                                         scale_in_cooldown=Duration.minutes(5),
                                         scale_out_cooldown=Duration.minutes(1))
        if not task.queues:
            return
        backlog = cloudwatch.MathExpression(
            expression="+".join(f"q{i}" for i in range(len(task.queues))),
            label=f"{task.name} backlog", period=Duration.minutes(1),
            using_metrics={f"q{i}": self.messaging.queues[q]
                           .metric_approximate_number_of_messages_visible(statistic="Maximum")
                           for i, q in enumerate(task.queues)})
        low, high = BACKLOG_STEPS
        scaling.scale_on_metric(
            "Backlog", metric=backlog, cooldown=Duration.minutes(2),
            adjustment_type=autoscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            scaling_steps=[autoscaling.ScalingInterval(upper=low, change=0),
                           autoscaling.ScalingInterval(lower=low, change=1),
                           autoscaling.ScalingInterval(lower=high, change=3)])

    def _grant(self, task: plan.Task, role: iam.IRole) -> None:
        service = task.service
        if service.topic:
            # The outbox relay runs wherever the service's database is written: the web app
            # and its workers alike.
            grant_publish(self.messaging.topics[service.name], role)
        dlqs = plan.queues(self.topology)
        for queue in task.queues:
            self.messaging.queues[queue].grant_consume_messages(role)
            grant_dlq_watch(self.messaging.dlqs[dlqs[queue]], role)
        if task.worker is None:
            for name in service.queues:  # its own dead-letter queue: sent to, redriven from
                self.messaging.dlqs[name].grant_send_messages(role)
                self.messaging.dlqs[name].grant_consume_messages(role)
        if task.archives:
            grant_objects(self.storage.archive, role, "", read=True, write=True)
            grant_list(self.storage.archive, role)
        if service.needs_cognito_admin:
            self.auth.pool.grant(role, "cognito-idp:AdminConfirmSignUp",
                                 "cognito-idp:AdminDeleteUser")
        for bucket_name, prefixes in MEDIA_ACCESS.get(task.name, {}).items():
            bucket = {"uploads": self.storage.uploads, "media": self.storage.media}[bucket_name]
            for prefix, mode in prefixes.items():
                grant_objects(bucket, role, prefix, read="r" in mode, write="w" in mode)
        if service.needs_push:
            for arn in self.settings.push_platforms.values():
                _grant_push(role, arn)
        if service.name == "call":
            self.calls.grant_ice(role)


def _grant_push(role: iam.IRole, platform_arn: str) -> None:
    """Registering devices with one SNS platform application and pushing to them."""
    iam.Grant.add_to_principal(grantee=role, actions=["sns:CreatePlatformEndpoint"],
                               resource_arns=[platform_arn])
    endpoints = platform_arn.replace(":app/", ":endpoint/", 1) + "/*"
    iam.Grant.add_to_principal(grantee=role, resource_arns=[endpoints], actions=[
        "sns:Publish", "sns:SetEndpointAttributes", "sns:GetEndpointAttributes",
        "sns:DeleteEndpoint"])


def _retention(days: int) -> logs.RetentionDays:
    """The CloudWatch retention of `days` (one of the periods CloudWatch offers)."""
    periods = {7: logs.RetentionDays.ONE_WEEK, 14: logs.RetentionDays.TWO_WEEKS,
               30: logs.RetentionDays.ONE_MONTH, 90: logs.RetentionDays.THREE_MONTHS,
               180: logs.RetentionDays.SIX_MONTHS, 365: logs.RetentionDays.ONE_YEAR}
    if days not in periods:
        raise ValueError(f"logRetentionDays must be one of {sorted(periods)}")
    return periods[days]

