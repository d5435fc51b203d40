"""Data: Aurora PostgreSQL Serverless v2 (a database and a login role per service, each with a
rotated secret), ElastiCache Redis (TLS, AUTH) and an OpenSearch domain for search."""

from pathlib import Path

from aws_cdk import (
    CustomResource,
    Duration,
    RemovalPolicy,
    Stack,
)
from aws_cdk import (
    aws_ec2 as ec2,
)
from aws_cdk import (
    aws_elasticache as elasticache,
)
from aws_cdk import (
    aws_iam as iam,
)
from aws_cdk import (
    aws_lambda as lambda_,
)
from aws_cdk import (
    aws_logs as logs,
)
from aws_cdk import (
    aws_opensearchservice as opensearch,
)
from aws_cdk import (
    aws_rds as rds,
)
from aws_cdk import (
    aws_secretsmanager as secretsmanager,
)
from constructs import Construct

from query_svc.search.opensearch_bodies import analysis_settings
from stack.topology import Topology

from . import plan
from .network import NetworkStack
from .settings import DeploySettings

ROTATION = Duration.days(30)
# Characters a generated password leaves out: those that URLs, SQL literals and shells would
# need escaped (the same set as CDK's RDS default, which the rotation must keep to as well).
PASSWORD_EXCLUDE = " %+~`#$&*()|[]{}:;<>?!'/@\"\\"
DB_ADMIN = "asyncsns_admin"
DB_CLUSTER = "asyncsns"
SEARCH_DOMAIN = "asyncsns"
# What opensearch-py sends: index and search requests, index creation, existence checks.
SEARCH_ACTIONS = ["es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost", "es:ESHttpPut",
                  "es:ESHttpDelete"]
DB_PORT = 5432
REDIS_PORT = 6379
SEARCH_USER = "asyncsns"
# Analysis parts that every OpenSearch domain has; anything else is a plugin package.
BUILT_IN_ANALYSIS = {"custom", "standard", "cjk_width", "cjk_bigram", "lowercase"}


def analysis_plugins_needed() -> set[str]:
    """The analysis types the query service's index settings use that OpenSearch Service does
    not have built in (each would need a package associated with the domain)."""
    settings = analysis_settings()
    used = {part["type"] for group in ("filter", "tokenizer", "analyzer")
            for part in settings.get(group, {}).values()}
    used |= {a["tokenizer"] for a in settings["analyzer"].values()}
    used |= {f for a in settings["analyzer"].values() for f in a.get("filter", [])
             if f not in settings.get("filter", {})}
    return used - BUILT_IN_ANALYSIS


class DataStack(Stack):
    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings,
                 network: NetworkStack, topology: Topology, **kwargs):
        super().__init__(scope, id, **kwargs)
        vpc = network.vpc
        self.rotation_sg = ec2.SecurityGroup(
            self, "RotationSg", vpc=vpc, description="secret rotation functions")
        self._aurora(settings, network, topology)
        self._redis(settings, network)
        self._search(settings, network)

    def _aurora(self, settings: DeploySettings, network: NetworkStack,
                topology: Topology) -> None:
        self.db_sg = ec2.SecurityGroup(self, "DbSg", vpc=network.vpc,
                                       description="Aurora: services and rotation only")
        readers = [rds.ClusterInstance.serverless_v2(f"reader{i + 1}", scale_with_writer=True)
                   for i in range(settings.db_readers)]
        self.cluster = rds.DatabaseCluster(
            self, "Aurora",
            engine=rds.DatabaseClusterEngine.aurora_postgres(
                version=rds.AuroraPostgresEngineVersion.VER_16_6),
            credentials=rds.Credentials.from_generated_secret(
                DB_ADMIN, exclude_characters=PASSWORD_EXCLUDE),
            writer=rds.ClusterInstance.serverless_v2("writer"),
            readers=readers,
            serverless_v2_min_capacity=settings.db_min_acu,
            serverless_v2_max_capacity=settings.db_max_acu,
            vpc=network.vpc, vpc_subnets=network.data_subnets, security_groups=[self.db_sg],
            port=DB_PORT,
            storage_encrypted=True, iam_authentication=True, enable_data_api=True,
            deletion_protection=True, removal_policy=RemovalPolicy.SNAPSHOT,
            backup=rds.BackupProps(retention=Duration.days(7)),
            cluster_identifier=DB_CLUSTER, cloudwatch_logs_exports=["postgresql"],
            # Connections must be encrypted (the services' URLs ask for TLS too).
            parameters={"rds.force_ssl": "1"},
        )
        # Made here with its retention, before RDS would make it without one.
        postgres_logs = logs.LogGroup(
            self, "PostgresLogs", retention=logs.RetentionDays.ONE_MONTH,
            log_group_name=f"/aws/rds/cluster/{DB_CLUSTER}/postgresql",
            removal_policy=RemovalPolicy.DESTROY)
        self.cluster.node.add_dependency(postgres_logs)
        self.db_sg.add_ingress_rule(
            self.rotation_sg, ec2.Port.tcp(DB_PORT), "secret rotation")
        self.cluster.add_rotation_single_user(
            automatically_after=ROTATION, exclude_characters=PASSWORD_EXCLUDE,
            vpc_subnets=network.app_subnets, security_group=self.rotation_sg)
        # One login role and database per service; workers use their service's.
        self.database_secrets: dict[str, secretsmanager.ISecret] = {}
        for service in topology.services:
            secret = rds.DatabaseSecret(
                self, f"{plan.construct_id(service.name)}DbSecret", username=service.name,
                dbname=service.name, master_secret=self.cluster.secret,
                exclude_characters=PASSWORD_EXCLUDE,
                secret_name=f"asyncsns/{service.name}/database")
            self.database_secrets[service.name] = secret.attach(self.cluster)
        users = self._database_users()
        for name, secret in self.database_secrets.items():
            # Rotation logs in as the role, which must exist first.
            schedule = secret.add_rotation_schedule(
                "Rotation", automatically_after=ROTATION,
                hosted_rotation=secretsmanager.HostedRotation.postgre_sql_single_user(
                    function_name=f"asyncsns-{name}-db-rotation", vpc=network.vpc,
                    vpc_subnets=network.app_subnets, security_groups=[self.rotation_sg],
                    exclude_characters=PASSWORD_EXCLUDE))
            schedule.node.add_dependency(users)

    def _database_users(self) -> CustomResource:
        log_group = logs.LogGroup(self, "DbUsersLogs", retention=logs.RetentionDays.ONE_MONTH,
                                  removal_policy=RemovalPolicy.DESTROY)
        role = iam.Role(self, "DbUsersRole",
                        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        log_group.grant_write(role)
        role.add_to_policy(iam.PolicyStatement(actions=["rds-data:ExecuteStatement"],
                                               resources=[self.cluster.cluster_arn]))
        self.cluster.secret.grant_read(role)
        for secret in self.database_secrets.values():
            secret.grant_read(role)
        function = lambda_.Function(
            self, "DbUsers", runtime=lambda_.Runtime.PYTHON_3_14, handler="index.handler",
            code=lambda_.Code.from_asset(str(Path(__file__).parent / "db_users")),
            role=role, log_group=log_group, timeout=Duration.minutes(2),
            description="creates each service's database and login role")
        users = CustomResource(self, "ServiceDatabases", service_token=function.function_arn,
                               resource_type="Custom::ServiceDatabases", properties={
            "ClusterArn": self.cluster.cluster_arn,
            "AdminSecretArn": self.cluster.secret.secret_arn,
            "Services": [{"Name": name, "SecretArn": secret.secret_arn}
                         for name, secret in self.database_secrets.items()],
        })
        # The Data API answers only once the writer is up.
        users.node.add_dependency(self.cluster)
        return users

    def _redis(self, settings: DeploySettings, network: NetworkStack) -> None:
        self.redis_sg = ec2.SecurityGroup(self, "RedisSg", vpc=network.vpc,
                                          description="Redis: services only")
        self.redis_secret = secretsmanager.Secret(
            self, "RedisAuth", secret_name="asyncsns/redis/auth",
            description="ElastiCache AUTH token",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template="{}", generate_string_key="token",
                exclude_punctuation=True, password_length=64))
        subnets = elasticache.CfnSubnetGroup(
            self, "RedisSubnets", description="asyncsns redis",
            subnet_ids=network.vpc.select_subnets(
                subnet_type=ec2.SubnetType.PRIVATE_ISOLATED).subnet_ids)
        self.redis = elasticache.CfnReplicationGroup(
            self, "Redis", replication_group_description="asyncsns pub/sub, caches, presence",
            engine="redis", engine_version="7.1", cache_node_type=settings.redis_node_type,
            num_node_groups=1, replicas_per_node_group=1,
            automatic_failover_enabled=True, multi_az_enabled=True,
            transit_encryption_enabled=True, at_rest_encryption_enabled=True,
            auth_token=self.redis_secret.secret_value_from_json("token").unsafe_unwrap(),
            cache_subnet_group_name=subnets.ref,
            security_group_ids=[self.redis_sg.security_group_id],
            port=REDIS_PORT, snapshot_retention_limit=1,
        )
        self.redis_host = self.redis.attr_primary_end_point_address
        self.redis_port = self.redis.attr_primary_end_point_port

    def _search(self, settings: DeploySettings, network: NetworkStack) -> None:
        needed = analysis_plugins_needed()
        if needed:
            raise ValueError(f"the query service's index settings need plugins: {sorted(needed)}")
        self.search_sg = ec2.SecurityGroup(self, "SearchSg", vpc=network.vpc,
                                           description="OpenSearch: the query service only")
        self.search_secret = secretsmanager.Secret(
            self, "SearchMaster", secret_name="asyncsns/search/master",
            description="OpenSearch internal master user",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=f'{{"username": "{SEARCH_USER}"}}',
                generate_string_key="password", exclude_characters=PASSWORD_EXCLUDE,
                require_each_included_type=True, password_length=32))
        nodes = settings.search_data_nodes
        log_groups = {kind: logs.LogGroup(self, f"Search{kind.title()}Logs",
                                          retention=logs.RetentionDays.ONE_MONTH,
                                          removal_policy=RemovalPolicy.DESTROY)
                      for kind in ("app", "search", "index")}
        logs.ResourcePolicy(self, "SearchLogsPolicy", policy_statements=[iam.PolicyStatement(
            principals=[iam.ServicePrincipal("es.amazonaws.com")],
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[f"{g.log_group_arn}" for g in log_groups.values()])])
        self.search = opensearch.Domain(
            self, "Search", version=opensearch.EngineVersion.OPENSEARCH_2_19,
            domain_name=SEARCH_DOMAIN,
            vpc=network.vpc, vpc_subnets=[network.data_subnets],
            security_groups=[self.search_sg],
            capacity=opensearch.CapacityConfig(
                data_nodes=nodes, data_node_instance_type=settings.search_instance_type,
                multi_az_with_standby_enabled=False),
            zone_awareness=opensearch.ZoneAwarenessConfig(
                enabled=nodes > 1, availability_zone_count=2 if nodes > 1 else None),
            ebs=opensearch.EbsOptions(volume_size=20, volume_type=ec2.EbsDeviceVolumeType.GP3),
            encryption_at_rest=opensearch.EncryptionAtRestOptions(enabled=True),
            node_to_node_encryption=True, enforce_https=True,
            tls_security_policy=opensearch.TLSSecurityPolicy.TLS_1_2,
            # The query service speaks HTTP basic auth (opensearch-py, no SigV4): the domain's
            # internal user database checks every request (fine-grained access control).
            fine_grained_access_control=opensearch.AdvancedSecurityOptions(
                master_user_name=SEARCH_USER,
                master_user_password=self.search_secret.secret_value_from_json("password")),
            logging=opensearch.LoggingOptions(
                app_log_enabled=True, app_log_group=log_groups["app"],
                slow_search_log_enabled=True, slow_search_log_group=log_groups["search"],
                slow_index_log_enabled=True, slow_index_log_group=log_groups["index"]),
            # The log groups' resource policy is made here, not by CDK's policy-writing function.
            suppress_logs_resource_policy=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # Anyone who reaches the domain (only the query service's security group can) may send
        # requests; each must then authenticate as an internal user. Set on the resource
        # itself: CDK would otherwise set it through a custom-resource function.
        domain = self.search.node.default_child
        domain.access_policies = iam.PolicyDocument(statements=[iam.PolicyStatement(
            principals=[iam.AnyPrincipal()], actions=SEARCH_ACTIONS,
            resources=[f"arn:{self.partition}:es:{self.region}:{self.account}:"
                       f"domain/{SEARCH_DOMAIN}/*"])]).to_json()
        self.search_host = self.search.domain_endpoint
