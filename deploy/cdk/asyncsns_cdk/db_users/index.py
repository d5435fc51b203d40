"""CloudFormation custom resource: one database and one login role per service in Aurora.

It runs SQL through the RDS Data API as the cluster's admin, so it needs no network path to
the cluster and no driver. Each role's password is read from that service's secret here,
never passed through the template. Each role owns its own database and nothing else:
PUBLIC loses CONNECT on it, so no service can open another's database.
Deleting the resource keeps the databases and roles (their data outlives the stack).
"""

import json
import urllib.request

import boto3

rds = boto3.client("rds-data")
secrets = boto3.client("secretsmanager")


def handler(event, context):
    status, reason = "SUCCESS", ""
    try:
        if event["RequestType"] in ("Create", "Update"):
            props = event["ResourceProperties"]
            for service in props["Services"]:
                ensure_service(props["ClusterArn"], props["AdminSecretArn"], service["Name"],
                               service["SecretArn"])
    except Exception as exc:  # CloudFormation must hear back either way, or it waits an hour
        status, reason = "FAILED", f"{type(exc).__name__}: {exc}"[:400]
    respond(event, context, status, reason)


def ensure_service(cluster_arn: str, admin_secret_arn: str, name: str, secret_arn: str) -> None:
    """Create the role and its database if missing; (re)set the role's password to the
    secret's current one."""
    password = json.loads(secrets.get_secret_value(SecretId=secret_arn)["SecretString"])["password"]

    def sql(statement: str, **params: str) -> list:
        response = rds.execute_statement(
            resourceArn=cluster_arn, secretArn=admin_secret_arn, database="postgres",
            sql=statement, parameters=[{"name": k, "value": {"stringValue": v}}
                                       for k, v in params.items()])
        return response.get("records", [])

    role, literal = identifier(name), quote_literal(password)
    verb = "ALTER" if sql("SELECT 1 FROM pg_roles WHERE rolname = :name", name=name) else "CREATE"
    sql(f"{verb} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {literal}")
    # PostgreSQL 16 lets the admin make a role own a database only if it may act as that role.
    sql(f"GRANT {role} TO CURRENT_USER")
    if not sql("SELECT 1 FROM pg_database WHERE datname = :name", name=name):
        sql(f"CREATE DATABASE {role} OWNER {role}")
    sql(f"REVOKE ALL ON DATABASE {role} FROM PUBLIC")


def identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def respond(event, context, status: str, reason: str) -> None:
    body = json.dumps({
        "Status": status, "Reason": reason or f"see {context.log_stream_name}",
        "PhysicalResourceId": event.get("PhysicalResourceId") or "asyncsns-databases",
        "StackId": event["StackId"], "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
    }).encode()
    request = urllib.request.Request(event["ResponseURL"], data=body, method="PUT",
                                     headers={"Content-Type": ""})
    urllib.request.urlopen(request, timeout=30).close()
