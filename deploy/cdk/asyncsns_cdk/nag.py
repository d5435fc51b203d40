"""Every cdk-nag (AwsSolutions) finding this app accepts, each with the reason it is right
here, on the one resource it concerns. Anything not listed fails `cdk synth`/`cdk deploy`.

IAM5 (wildcards) is accepted only for resources whose names are not known in advance (object
keys under a prefix, SNS push endpoints) and for APIs that have no resource-level
permissions (X-Ray, ECR's token); never for a wildcard action."""

from cdk_nag import NagPackSuppression, NagSuppressions, RegexAppliesTo
from constructs import IConstruct

# The object ARNs of the app's own buckets under one prefix (cdk-nag shows a bucket's ARN as
# <LogicalId.Arn>): keys are the object ids the services make.
OBJECT_PREFIXES = RegexAppliesTo(
    regex=r"/^Resource::<(Uploads|Media|Archive)[0-9A-F]{8}\.Arn>\/.*\*$/")


def _accept(constructs: list[IConstruct] | IConstruct, rule: str, reason: str,
            applies_to: list | None = None) -> None:
    NagSuppressions.add_resource_suppressions(
        constructs, [NagPackSuppression(id=f"AwsSolutions-{rule}", reason=reason,
                                        applies_to=applies_to)],
        apply_to_children=True)


def acknowledge(*, network, data, messaging, storage, auth, edge, services, observability,
                settings) -> None:
    _data(data)
    _auth(auth)
    _edge(edge, settings)
    _services(services)
    _accept(messaging.dlqs["notifier-push-dlq"], "SQS3",
            "It is a dead-letter queue: the notifier moves push jobs here after their last "
            "retry (topology `queues`), and its redrive command moves them back.")


def _data(data) -> None:
    _accept(data.redis, "AEC5",
            "The default port: only the services' security groups reach it, over TLS with an "
            "AUTH token; another port number would protect nothing more.")
    _accept(data.redis_secret, "SMG4",
            "ElastiCache AUTH tokens have no Secrets Manager rotation function; rotating means "
            "ROTATE on the replication group then redeploying the services (deploy/README.md).")
    _accept(data.search_secret, "SMG4",
            "The OpenSearch internal master user has no Secrets Manager rotation function; "
            "changing it is a domain update followed by a service redeploy (deploy/README.md).")
    _accept(data.search, "OS3",
            "The domain is in private subnets and its security group admits the query "
            "service's tasks only; fine-grained access control authenticates every request.")
    _accept(data.search, "OS5",
            "Requests are not anonymous: fine-grained access control requires HTTP basic "
            "auth of an internal user for every request (the query service's client cannot "
            "sign with SigV4). The open access policy only lets requests reach that check.")
    _accept(data.search, "OS4",
            "Two data nodes in two AZs hold a small index; dedicated masters (three more "
            "instances) pay off from about ten data nodes. Add them with the data nodes.")


def _auth(auth) -> None:
    _accept(auth.pool, "COG1",
            "Length alone, as NIST SP 800-63B advises (composition rules make passwords "
            "weaker); the profile service's domain rule is the same (topology.UserPool).")
    _accept(auth.pool, "COG2",
            "The profile service signs users in with USER_PASSWORD_AUTH and has no MFA "
            "challenge step yet; required MFA would lock every user out.")
    _accept(auth.pool, "COG8",
            "The Plus feature plan (threat protection) is billed per active user; the "
            "profile service limits sign-in attempts per account and WAF rate-limits per IP.")


def _edge(edge, settings) -> None:
    _accept(edge.distribution, "CFR1",
            "A social network open to everyone: no country is excluded.")
    if not settings.domain_name:
        _accept(edge.distribution, "CFR4",
                "Without a custom domain CloudFront serves its default *.cloudfront.net "
                "certificate, whose TLS policy cannot be chosen; set domainName and "
                "certificateArn to get TLSv1.2_2021.")


def _services(services) -> None:
    _accept(services.vapid, "SMG4",
            "The Web Push key pair identifies this server to browsers: every push "
            "subscription is bound to it, so a new pair would silently end them all.")
    for deployed in services.deployed.values():
        definition = deployed.service.task_definition
        _accept(definition, "ECS2",
                "These variables are configuration, not secrets (queue names, ARNs, URLs "
                "without credentials): every credential comes from Secrets Manager through "
                "the container's `secrets`.")
        _accept(definition.task_role, "IAM5",
                "Two kinds of wildcard resource only: X-Ray's write API has no resource-level "
                "permissions (Resource::*, the ADOT collector), and objects are granted by key "
                "prefix of the app's own buckets, as their keys are the object ids the "
                "services make.", ["Resource::*", OBJECT_PREFIXES])
        _accept(definition.obtain_execution_role(), "IAM5",
                "ecr:GetAuthorizationToken has no resource-level permissions; pulling is "
                "limited to the image's own repository.", ["Resource::*"])
        if deployed.task.service.needs_push:
            _accept(definition.task_role, "IAM5",
                    "Device endpoints are made at run time under the platform application's "
                    "ARN: the grant is that application's endpoints only.",
                    [RegexAppliesTo(regex=r"/^Resource::arn:.*:endpoint\/.*\/\*$/")])
