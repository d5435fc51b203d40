"""Traces: an ADOT collector beside each app container receives OTLP on localhost and sends
the spans to X-Ray. The apps propagate W3C trace context through HTTP and SNS/SQS
(chassis.tracing); the exporter settings below are the OpenTelemetry SDK's standard ones."""

from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs

COLLECTOR_IMAGE = "public.ecr.aws/aws-observability/aws-otel-collector:v0.40.0"
OTLP_GRPC = "127.0.0.1:4317"
# The collector's whole configuration (ADOT reads it from AOT_CONFIG_CONTENT): OTLP in,
# batched, X-Ray out, nothing listening beyond the task.
COLLECTOR_CONFIG = f"""\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {OTLP_GRPC}
processors:
  batch:
    timeout: 5s
exporters:
  awsxray:
    indexed_attributes: [service.name]
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [awsxray]
"""
# X-Ray's write API has no resource-level permissions: its resource is always "*".
XRAY_ACTIONS = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
                "xray:GetSamplingTargets", "xray:GetSamplingStatisticSummaries"]


def app_env(name: str) -> dict[str, str]:
    """Where the app's OpenTelemetry SDK sends spans, and under which service name."""
    return {"OTEL_SERVICE_NAME": name, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{OTLP_GRPC}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_PROPAGATORS": "tracecontext,baggage"}


def add_collector(definition: ecs.FargateTaskDefinition, log_group: logs.ILogGroup) -> None:
    """The sidecar; not essential, so a collector failure never stops the service."""
    definition.add_container(
        "adot-collector", image=ecs.ContainerImage.from_registry(COLLECTOR_IMAGE),
        essential=False, memory_reservation_mib=64,
        environment={"AOT_CONFIG_CONTENT": COLLECTOR_CONFIG},
        logging=ecs.LogDrivers.aws_logs(stream_prefix="adot", log_group=log_group))
    definition.add_to_task_role_policy(iam.PolicyStatement(actions=XRAY_ACTIONS,
                                                           resources=["*"]))
