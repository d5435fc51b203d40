"""Edge: CloudFront (HTTPS only, WAF) in front of an internal ALB, reached as a VPC origin,
and of the media bucket under /media/*. The ALB's listener rules are made by the services
stack from the gateway's route table (plan.routes); here the listener answers 404 for the
rest, with the gateway's own problem body."""

from aws_cdk import Annotations, Duration, Stack
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from stack.gateway import problem_body
from stack.topology import MEDIA_PATH

from .network import VPC_CIDR, NetworkStack
from .settings import WS_PING_INTERVAL_S, DeploySettings
from .storage import StorageStack

# Longer than any quiet spell of a live WebSocket (pinged every WS_PING_INTERVAL_S) or an SSE
# stream (a keep-alive every 15 s).
ALB_IDLE_TIMEOUT = Duration.seconds(6 * WS_PING_INTERVAL_S)
# Requests per client IP per 5 minutes before WAF blocks it for a while.
RATE_LIMIT = 3000
MANAGED_RULE_GROUPS = (
    "AWSManagedRulesCommonRuleSet",
    "AWSManagedRulesKnownBadInputsRuleSet",
    "AWSManagedRulesAmazonIpReputationList",
)
# The common rule set blocks bodies over 8 KB; the services hold bodies to 1 MiB themselves
# and a WHIP offer alone may be 32 KiB, so that one rule only counts.
COUNT_ONLY = {"AWSManagedRulesCommonRuleSet": ("SizeRestrictions_BODY",)}


class WafStack(Stack):
    """The web ACL CloudFront uses; CloudFront-scoped ACLs live in us-east-1."""

    def __init__(self, scope: Construct, id: str, **kwargs):
        super().__init__(scope, id, **kwargs)
        rules = [self._managed(i, name) for i, name in enumerate(MANAGED_RULE_GROUPS)]
        rules.append(wafv2.CfnWebACL.RuleProperty(
            name="rate-per-ip", priority=len(rules),
            action=wafv2.CfnWebACL.RuleActionProperty(block={}),
            statement=wafv2.CfnWebACL.StatementProperty(
                rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                    limit=RATE_LIMIT, aggregate_key_type="IP")),
            visibility_config=_visibility("rate-per-ip")))
        self.web_acl = wafv2.CfnWebACL(
            self, "WebAcl", scope="CLOUDFRONT",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=_visibility("asyncsns"), rules=rules)

    @staticmethod
    def _managed(priority: int, name: str) -> wafv2.CfnWebACL.RuleProperty:
        overrides = [wafv2.CfnWebACL.RuleActionOverrideProperty(
            name=rule, action_to_use=wafv2.CfnWebACL.RuleActionProperty(count={}))
            for rule in COUNT_ONLY.get(name, ())]
        return wafv2.CfnWebACL.RuleProperty(
            name=name, priority=priority,
            override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
            statement=wafv2.CfnWebACL.StatementProperty(
                managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                    vendor_name="AWS", name=name, rule_action_overrides=overrides or None)),
            visibility_config=_visibility(name))


def _visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
    return wafv2.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True)


class EdgeStack(Stack):
    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings,
                 network: NetworkStack, storage: StorageStack, waf: WafStack, **kwargs):
        super().__init__(scope, id, **kwargs)
        self.alb_sg = ec2.SecurityGroup(
            self, "AlbSg", vpc=network.vpc,
            description="internal ALB, reached by the CloudFront VPC origin")
        # The VPC origin connects from CloudFront-managed interfaces inside the VPC.
        port = 443 if settings.origin_https else 80
        self.alb_sg.add_ingress_rule(ec2.Peer.ipv4(VPC_CIDR),
                                     ec2.Port.tcp(port), "CloudFront VPC origin")
        self.alb = elbv2.ApplicationLoadBalancer(
            self, "Alb", vpc=network.vpc, internet_facing=False,
            vpc_subnets=network.app_subnets, security_group=self.alb_sg,
            idle_timeout=ALB_IDLE_TIMEOUT, drop_invalid_header_fields=True)
        self.alb.log_access_logs(storage.logs, "alb")
        not_found = elbv2.ListenerAction.fixed_response(
            404, content_type="application/problem+json", message_body=problem_body(404))
        if settings.origin_https:
            self.listener = self.alb.add_listener(
                "Https", port=443, protocol=elbv2.ApplicationProtocol.HTTPS,
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS, open=False,
                certificates=[elbv2.ListenerCertificate.from_arn(
                    settings.origin_certificate_arn)],
                default_action=not_found)
        else:
            self.listener = self.alb.add_listener(
                "Http", port=80, protocol=elbv2.ApplicationProtocol.HTTP, open=False,
                default_action=not_found)
        self.distribution = self._distribution(settings, storage, waf)
        host = settings.domain_name or self.distribution.distribution_domain_name
        self.public_url = f"https://{host}"

    def _distribution(self, settings: DeploySettings, storage: StorageStack,
                      waf: WafStack) -> cloudfront.Distribution:
        origin = origins.VpcOrigin.with_application_load_balancer(
            self.alb,
            protocol_policy=cloudfront.OriginProtocolPolicy.HTTPS_ONLY if settings.origin_https
            else cloudfront.OriginProtocolPolicy.HTTP_ONLY,
            domain_name=settings.origin_domain_name or None,
            origin_ssl_protocols=[cloudfront.OriginSslPolicy.TLS_V1_2],
            read_timeout=Duration.seconds(60), keepalive_timeout=Duration.seconds(60))
        # Imported by attributes: OAC then leaves the bucket policy to the storage stack.
        media = s3.Bucket.from_bucket_attributes(
            self, "MediaBucket", bucket_arn=storage.media.bucket_arn,
            bucket_regional_domain_name=storage.media.bucket_regional_domain_name)
        media_origin = origins.S3BucketOrigin.with_origin_access_control(
            media, origin_access_levels=[cloudfront.AccessLevel.READ])
        Annotations.of(self).acknowledge_warning(
            "@aws-cdk/aws-cloudfront-origins:updateImportedBucketPolicyOac",
            "StorageStack._let_cloudfront_read grants CloudFront read access")
        custom_domain = {}
        if settings.domain_name and settings.certificate_arn:
            custom_domain = {
                "domain_names": [settings.domain_name],
                "certificate": acm.Certificate.from_certificate_arn(
                    self, "Certificate", settings.certificate_arn),
                "minimum_protocol_version": cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021,
            }
        return cloudfront.Distribution(
            self, "Cdn", comment="asyncsns", web_acl_id=waf.web_acl.attr_arn,
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            price_class=cloudfront.PriceClass.PRICE_CLASS_200,
            enable_logging=True, log_bucket=storage.logs, log_file_prefix="cloudfront/",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origin,
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                # Everything but Host, so the WebSocket handshake (Sec-WebSocket-*), Origin,
                # Authorization and traceparent reach the services.
                origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
                response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS),
            additional_behaviors={f"{MEDIA_PATH}*": cloudfront.BehaviorOptions(
                origin=media_origin,
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS)},
            **custom_domain)
