"""Calls: how clients reach a TURN relay. Kinesis Video Streams runs the TURN servers (UDP,
TCP and TLS on 443, in every AZ) and issues short-lived credentials per user from one
signaling channel; the call service only asks it for them (`ICE_PROVIDER=kvs`), so there is
no relay fleet to run, patch or scale here. deploy/README.md compares it with coturn."""

import json

from aws_cdk import Aws, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kinesisvideo as kinesisvideo
from constructs import Construct

# What the call service needs of the channel (call_svc.ice.KvsIceServers).
KVS_ACTIONS = ["kinesisvideo:GetSignalingChannelEndpoint", "kinesisvideo:GetIceServerConfig"]


class CallsStack(Stack):
    def __init__(self, scope: Construct, id: str, **kwargs):
        super().__init__(scope, id, **kwargs)
        # Only its ICE configuration is used: signaling stays on the call service's WebSocket.
        self.channel = kinesisvideo.CfnSignalingChannel(
            self, "TurnChannel", name="asyncsns-turn", type="SINGLE_MASTER",
            message_ttl_seconds=60)

    @property
    def ice_env(self) -> dict[str, str]:
        """The call service's ICE settings (call_svc.settings.CallSettings)."""
        return {
            "ICE_PROVIDER": "kvs",
            "KVS_CHANNEL_ARN": self.channel.attr_arn,
            "STUN_URLS": json.dumps([f"stun:stun.kinesisvideo.{Aws.REGION}.amazonaws.com:443"]),
        }

    def grant_ice(self, grantee: iam.IGrantable) -> iam.Grant:
        return iam.Grant.add_to_principal(grantee=grantee, actions=KVS_ACTIONS,
                                          resource_arns=[self.channel.attr_arn])
