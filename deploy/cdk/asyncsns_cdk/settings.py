"""What a deployment may choose (CDK context, `cdk deploy -c key=value`), with defaults that
deploy a small but highly available system."""

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from constructs import Node

from stack.topology import TOPOLOGY

# The build context of every image: the repository root (deploy/cdk/asyncsns_cdk/ is 3 down).
REPO_ROOT = Path(__file__).resolve().parents[3]
CONTAINER_PORT = 8000  # every image's PORT (deploy/docker/app.Dockerfile)
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
# uvicorn pings WebSocket clients every 20 s (its --ws-ping-interval default); the ALB must not
# close a quiet but live connection before a ping crossed it.
WS_PING_INTERVAL_S = 20


@dataclass(frozen=True)
class DeploySettings:
    """Deployment choices; each field is read from the CDK context key of the same name
    in camelCase (`natGateways`), strings as given, numbers parsed."""

    account: str | None = None
    region: str = TOPOLOGY.region
    # A custom domain for CloudFront (with an ACM certificate in us-east-1); without one the
    # distribution's own *.cloudfront.net name is the public URL.
    domain_name: str = ""
    certificate_arn: str = ""
    # HTTPS from CloudFront to the (internal) ALB: a certificate in the deployment's region for
    # a name the VPC origin connects to. Without one, CloudFront reaches the ALB over HTTP
    # inside the VPC (VPC origin), and viewers still use HTTPS only.
    origin_domain_name: str = ""
    origin_certificate_arn: str = ""
    alarm_email: str = ""
    nat_gateways: int = 1
    interface_endpoints: bool = True
    db_readers: int = 1
    db_min_acu: float = 0.5
    db_max_acu: float = 8.0
    redis_node_type: str = "cache.t4g.micro"
    search_instance_type: str = "t3.small.search"
    search_data_nodes: int = 2
    apns_platform_arn: str = ""
    fcm_platform_arn: str = ""
    log_retention_days: int = 30
    max_tasks: int = 10
    vapid_subject: str = "mailto:ops@asyncsns.invalid"

    @classmethod
    def from_context(cls, node: Node) -> "DeploySettings":
        values: dict[str, Any] = {
            "account": os.environ.get("CDK_DEFAULT_ACCOUNT"),
            "region": os.environ.get("CDK_DEFAULT_REGION") or TOPOLOGY.region,
        }
        for f in fields(cls):
            raw = node.try_get_context(_camel(f.name))
            if raw is None:
                continue
            default = f.default
            if isinstance(default, bool):
                values[f.name] = raw if isinstance(raw, bool) else str(raw).lower() == "true"
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = str(raw)
        return cls(**values)

    @property
    def origin_https(self) -> bool:
        return bool(self.origin_certificate_arn and self.origin_domain_name)

    @property
    def push_platforms(self) -> dict[str, str]:
        """The SNS platform applications mobile push uses (made with the APNs certificate and
        the FCM key, outside this app), by the kinds the topology names."""
        arns = {"apns": self.apns_platform_arn, "fcm": self.fcm_platform_arn}
        return {kind: arns[kind] for kind, _ in TOPOLOGY.push_platforms if arns.get(kind)}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)

