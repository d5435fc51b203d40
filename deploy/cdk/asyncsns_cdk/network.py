"""Network: a VPC over two AZs, tasks in private subnets, data stores in isolated ones, and
endpoints for the AWS APIs the tasks call most, so that their traffic stays off the NAT."""

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from .settings import DeploySettings

# The APIs every task calls on every request or message: pulling images (ECR), logging,
# reading secrets at start, and the messaging itself.
INTERFACE_ENDPOINTS = {
    "Sqs": ec2.InterfaceVpcEndpointAwsService.SQS,
    "Sns": ec2.InterfaceVpcEndpointAwsService.SNS,
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
}


# A literal range (not the VPC's token) so that security group rules stay reviewable.
VPC_CIDR = "10.40.0.0/16"


class NetworkStack(Stack):
    def __init__(self, scope: Construct, id: str, *, settings: DeploySettings, **kwargs):
        super().__init__(scope, id, **kwargs)
        self.vpc = ec2.Vpc(
            self, "Vpc", max_azs=2, nat_gateways=settings.nat_gateways,
            ip_addresses=ec2.IpAddresses.cidr(VPC_CIDR),
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC,
                                        cidr_mask=24),
                ec2.SubnetConfiguration(name="app", cidr_mask=20,
                                        subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                ec2.SubnetConfiguration(name="data", cidr_mask=24,
                                        subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            ],
            # Images' layers come from S3: a gateway endpoint is free.
            gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(
                service=ec2.GatewayVpcEndpointAwsService.S3)},
        )
        ec2.FlowLog(self, "FlowLog", resource_type=ec2.FlowLogResourceType.from_vpc(self.vpc),
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(logs.LogGroup(
                        self, "FlowLogs", retention=logs.RetentionDays.ONE_MONTH)))
        if settings.interface_endpoints:
            endpoints_sg = ec2.SecurityGroup(self, "EndpointsSg", vpc=self.vpc,
                                             description="AWS API endpoints: HTTPS from the VPC")
            endpoints_sg.add_ingress_rule(ec2.Peer.ipv4(VPC_CIDR), ec2.Port.tcp(443),
                                          "AWS API calls from tasks and functions")
            for name, service in INTERFACE_ENDPOINTS.items():
                self.vpc.add_interface_endpoint(
                    name, service=service, private_dns_enabled=True, open=False,
                    security_groups=[endpoints_sg], subnets=self.app_subnets)

    @property
    def app_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

    @property
    def data_subnets(self) -> ec2.SubnetSelection:
        return ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
