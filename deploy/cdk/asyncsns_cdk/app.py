"""The CDK app: every stack, wired in dependency order, checked by cdk-nag (AwsSolutions)."""

from aws_cdk import App, Aspects, Environment, Tags
from cdk_nag import AwsSolutionsChecks

from stack.topology import TOPOLOGY, Topology

from . import nag
from .auth import AuthStack
from .calls import CallsStack
from .data import DataStack
from .edge import EdgeStack, WafStack
from .messaging import MessagingStack
from .network import NetworkStack
from .observability import ObservabilityStack
from .services import ServicesStack
from .settings import DeploySettings
from .storage import StorageStack, bucket_names

WAF_REGION = "us-east-1"  # where CloudFront's web ACLs must be


def build_app(app: App | None = None, *, topology: Topology = TOPOLOGY,
              checks: bool = True) -> App:
    """Every stack of the deployment on `app` (a new one by default)."""
    app = app or App()
    settings = DeploySettings.from_context(app.node)
    env = Environment(account=settings.account, region=settings.region)
    cross_region = settings.region != WAF_REGION

    def named(id: str) -> dict:
        return {"stack_name": f"asyncsns-{id.lower()}", "env": env}

    network = NetworkStack(app, "Network", settings=settings, **named("Network"))
    data = DataStack(app, "Data", settings=settings, network=network, topology=topology,
                     **named("Data"))
    names = bucket_names(topology)
    messaging = MessagingStack(app, "Messaging", topology=topology,
                               bucket_names=names, **named("Messaging"))
    storage = StorageStack(app, "Storage", settings=settings, topology=topology,
                           messaging=messaging, names=names, **named("Storage"))
    auth = AuthStack(app, "Auth", topology=topology, **named("Auth"))
    calls = CallsStack(app, "Calls", **named("Calls"))
    waf = WafStack(app, "Waf", stack_name="asyncsns-waf",
                   env=Environment(account=settings.account, region=WAF_REGION),
                   cross_region_references=cross_region)
    edge = EdgeStack(app, "Edge", settings=settings, network=network, storage=storage, waf=waf,
                     cross_region_references=cross_region, **named("Edge"))
    services = ServicesStack(app, "Services", settings=settings, topology=topology,
                             network=network, data=data, messaging=messaging, storage=storage,
                             auth=auth, calls=calls, edge=edge, **named("Services"))
    observability = ObservabilityStack(app, "Observability", settings=settings,
                                       services=services, messaging=messaging, edge=edge,
                                       **named("Observability"))
    Tags.of(app).add("project", "asyncsns")
    if checks:
        nag.acknowledge(network=network, data=data, messaging=messaging, storage=storage,
                        auth=auth, edge=edge, services=services, observability=observability,
                        settings=settings)
        Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app
