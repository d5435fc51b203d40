"""Auth: the Cognito user pool and the app client the services verify access tokens for
(`iss` of the pool, `client_id` of this client, `token_use == "access"`)."""

from aws_cdk import Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cognito as cognito
from constructs import Construct

from stack.provision import AUTH_FLOWS
from stack.topology import Topology


class AuthStack(Stack):
    def __init__(self, scope: Construct, id: str, *, topology: Topology, **kwargs):
        super().__init__(scope, id, **kwargs)
        wanted = topology.user_pool
        policy = wanted.password_policy
        self.pool = cognito.UserPool(
            self, "Users", user_pool_name=wanted.name,
            # The profile service is the sign-up front (it calls SignUp and confirms).
            self_sign_up_enabled=True,
            sign_in_aliases=cognito.SignInAliases(username=True, email=True),
            auto_verify=cognito.AutoVerifiedAttrs(email=True),
            password_policy=cognito.PasswordPolicy(
                min_length=policy["MinimumLength"],
                require_lowercase=policy["RequireLowercase"],
                require_uppercase=policy["RequireUppercase"],
                require_digits=policy["RequireNumbers"],
                require_symbols=policy["RequireSymbols"]),
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            deletion_protection=True, removal_policy=RemovalPolicy.RETAIN)
        self.client = self.pool.add_client(
            "Web", user_pool_client_name=wanted.client, generate_secret=False,
            # The provisioner's flows (refresh tokens are always allowed).
            auth_flows=cognito.AuthFlow(
                user_password="ALLOW_USER_PASSWORD_AUTH" in AUTH_FLOWS,
                user_srp="ALLOW_USER_SRP_AUTH" in AUTH_FLOWS),
            prevent_user_existence_errors=True, enable_token_revocation=True,
            access_token_validity=Duration.hours(1), id_token_validity=Duration.hours(1),
            refresh_token_validity=Duration.days(30))
        self.issuer = (f"https://cognito-idp.{Aws.REGION}.amazonaws.com/"
                       f"{self.pool.user_pool_id}")
        self.jwks_url = f"{self.issuer}/.well-known/jwks.json"
