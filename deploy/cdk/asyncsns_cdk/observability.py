"""Observability: alarms (5xx, p99 latency, DLQ depth, queue age) to one encrypted topic,
and a dashboard of the same signals. Log groups with retention are made beside each task
(services), traces go to X-Ray through each task's collector (tracing)."""

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from . import plan
from .edge import EdgeStack
from .messaging import MessagingStack
from .services import ServicesStack
from .settings import DeploySettings

P99_LATENCY_S = 1.0  # ALB target response time, 99th percentile over 5 minutes
ERRORS_5XX = 10  # per 5 minutes, per service
OLDEST_MESSAGE_S = 300  # a consumer that far behind is stuck or too slow


class ObservabilityStack(Stack):
    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings,
                 services: ServicesStack, messaging: MessagingStack, edge: EdgeStack,
                 **kwargs):
        super().__init__(scope, id, **kwargs)
        key = kms.Key(self, "AlarmsKey", enable_key_rotation=True,
                      description="asyncsns alarm topic")
        key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"),
                  "kms:Decrypt", "kms:GenerateDataKey")
        self.topic = sns.Topic(self, "Alarms", topic_name="asyncsns-alarms", master_key=key,
                               enforce_ssl=True)
        if settings.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(settings.alarm_email))
        self.alarms: list[cloudwatch.Alarm] = []
        dashboard = cloudwatch.Dashboard(self, "Dashboard", dashboard_name="asyncsns")
        edge_5xx = edge.alb.metrics.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT,
                                                  period=Duration.minutes(5))
        self._alarm("Alb5xx", edge_5xx, ERRORS_5XX, "the ALB answered 5xx itself")
        requests, latency, errors = [], [], []
        for name, deployed in services.deployed.items():
            cid, tg = plan.construct_id(name), deployed.target_group
            if tg is None:
                continue
            p99 = tg.metrics.target_response_time(statistic="p99", period=Duration.minutes(5))
            fives = tg.metrics.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT,
                                                period=Duration.minutes(5))
            self._alarm(f"{cid}Latency", p99, P99_LATENCY_S, f"{name} p99 latency")
            self._alarm(f"{cid}5xx", fives, ERRORS_5XX, f"{name} answered 5xx")
            requests.append(tg.metrics.request_count(label=name))
            latency.append(p99.with_(label=name))
            errors.append(fives.with_(label=name))
        depth, age = [], []
        for name, dlq in messaging.dlqs.items():
            cid = plan.construct_id(name)
            visible = dlq.metric_approximate_number_of_messages_visible(
                statistic="Maximum", period=Duration.minutes(5))
            # Anything there is a message that failed every retry.
            self._alarm(f"{cid}Depth", visible, 1, f"{name} holds failed messages")
            depth.append(visible.with_(label=name))
        for name, queue in messaging.queues.items():
            cid = plan.construct_id(name)
            oldest = queue.metric_approximate_age_of_oldest_message(
                statistic="Maximum", period=Duration.minutes(5))
            self._alarm(f"{cid}Age", oldest, OLDEST_MESSAGE_S, f"{name} falls behind")
            age.append(oldest.with_(label=name))
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Requests", left=requests, width=12),
            cloudwatch.GraphWidget(title="p99 latency (s)", left=latency, width=12))
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="5xx", left=[edge_5xx, *errors], width=12),
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=12))
        dashboard.add_widgets(
            cloudwatch.GraphWidget(title="DLQ depth", left=depth, width=12),
            cloudwatch.GraphWidget(title="Oldest message (s)", left=age, width=12))

    def _alarm(self, id: str, metric: cloudwatch.IMetric, threshold: float,
               description: str) -> None:
        alarm = metric.create_alarm(
            self, id, threshold=threshold, evaluation_periods=1, alarm_description=description,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
        alarm.add_alarm_action(actions.SnsAction(self.topic))
        self.alarms.append(alarm)

