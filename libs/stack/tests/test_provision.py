"""The provisioner against a real moto server: idempotent, filtered, with DLQs and a pool."""

import dataclasses
import json
import uuid

import boto3
import httpx
import pytest

from chassis.settings import ServiceSettings
from chassis.testing import FAKE_AWS, REGION
from stack.provision import main, provision, service_env
from stack.topology import Service, Subscription, Topology, UserPool


@pytest.fixture
def topology() -> Topology:
    """A producer and a consumer with names of their own, so tests share moto safely."""
    tag = uuid.uuid4().hex[:8]
    return Topology(
        services=(
            Service(name=f"alpha{tag}", port=1, routes=("/api/alpha/",)),
            Service(name=f"beta{tag}", port=2, routes=("/api/beta/",), publishes=False,
                    subscriptions=(Subscription(queue=f"beta{tag}-alpha", topic=f"alpha{tag}",
                                                event_types=("alpha.created", "alpha.gone")),)),
        ),
        user_pool=UserPool(name=f"users-{tag}", client=f"web-{tag}"),
        buckets=(f"archive-{tag}",),
    )


def client(name: str, endpoint: str):
    return boto3.client(name, endpoint_url=endpoint, region_name=REGION, **FAKE_AWS)


def test_applying_twice_changes_nothing(moto_endpoint: str, topology: Topology) -> None:
    first = provision(topology, moto_endpoint, REGION)
    second = provision(topology, moto_endpoint, REGION)

    assert first == second
    alpha, beta = topology.services
    queue = beta.subscriptions[0].queue
    sns, sqs = client("sns", moto_endpoint), client("sqs", moto_endpoint)
    # Paginated: other suites leave many topics in the session's moto.
    topics = [t["TopicArn"] for page in sns.get_paginator("list_topics").paginate()
              for t in page["Topics"]]
    assert sum(arn.endswith(f":{alpha.name}-events") for arn in topics) == 1
    assert set(first["topics"]) == {alpha.name}
    assert sorted(sqs.list_queues(QueueNamePrefix=queue)["QueueUrls"]) == sorted(
        [first["queues"][queue], first["queues"][f"{queue}-dlq"]])
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=first["topics"][alpha.name])
    assert len(subscriptions["Subscriptions"]) == 1
    client("s3", moto_endpoint).head_bucket(Bucket=topology.buckets[0])


def test_queue_has_a_dlq_that_keeps_messages_longer(moto_endpoint: str,
                                                    topology: Topology) -> None:
    outputs = provision(topology, moto_endpoint, REGION)
    queue = topology.subscriptions[0].queue
    sqs = client("sqs", moto_endpoint)
    attrs = sqs.get_queue_attributes(QueueUrl=outputs["queues"][queue],
                                     AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=outputs["queues"][f"{queue}-dlq"],
                                   AttributeNames=["All"])["Attributes"]

    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == topology.max_receive_count == 5
    assert int(dlq["MessageRetentionPeriod"]) > int(attrs["MessageRetentionPeriod"])
    assert int(attrs["VisibilityTimeout"]) == topology.visibility_timeout_s
    statement = json.loads(attrs["Policy"])["Statement"][0]
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == outputs["topics"][
        topology.services[0].name]


def test_only_filtered_event_types_reach_the_queue(moto_endpoint: str,
                                                   topology: Topology) -> None:
    outputs = provision(topology, moto_endpoint, REGION)
    sns, sqs = client("sns", moto_endpoint), client("sqs", moto_endpoint)
    topic = outputs["topics"][topology.services[0].name]
    queue_url = outputs["queues"][topology.subscriptions[0].queue]
    for event_type in ("alpha.ignored", "alpha.created"):
        sns.publish(TopicArn=topic, Message=json.dumps({"type": event_type}),
                    MessageAttributes={"event_type": {"DataType": "String",
                                                      "StringValue": event_type}})

    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    bodies = [json.loads(m["Body"]) for m in received.get("Messages", [])]
    assert bodies == [{"type": "alpha.created"}]  # raw delivery: the body is the message itself


def test_a_required_routing_attribute_narrows_the_filter(moto_endpoint: str,
                                                        topology: Topology) -> None:
    """`require`: of the wanted type, only events carrying the routing attribute arrive."""
    alpha, beta = topology.services
    sub = Subscription(queue=beta.subscriptions[0].queue, topic=alpha.name,
                       event_types=("alpha.created",), require=(("push", "yes"),))
    narrowed = dataclasses.replace(topology, services=(
        alpha, dataclasses.replace(beta, subscriptions=(sub,))))
    assert sub.filter_policy == {"event_type": ["alpha.created"], "push": ["yes"]}
    outputs = provision(topology, moto_endpoint, REGION)
    assert provision(narrowed, moto_endpoint, REGION) == outputs  # the filter is updated
    sns, sqs = client("sns", moto_endpoint), client("sqs", moto_endpoint)
    for n, push in enumerate((None, "yes", "no")):
        attributes = {"event_type": {"DataType": "String", "StringValue": "alpha.created"}}
        if push:
            attributes["push"] = {"DataType": "String", "StringValue": push}
        sns.publish(TopicArn=outputs["topics"][alpha.name], Message=json.dumps({"n": n}),
                    MessageAttributes=attributes)

    received = sqs.receive_message(QueueUrl=outputs["queues"][sub.queue],
                                   MaxNumberOfMessages=10, WaitTimeSeconds=1)
    assert [json.loads(m["Body"]) for m in received.get("Messages", [])] == [{"n": 1}]


def test_user_pool_lets_a_confirmed_user_log_in_with_a_password(moto_endpoint: str,
                                                                topology: Topology) -> None:
    outputs = provision(topology, moto_endpoint, REGION)
    idp = client("cognito-idp", moto_endpoint)
    idp.sign_up(ClientId=outputs["client_id"], Username="carol", Password="long enough",
                UserAttributes=[{"Name": "email", "Value": "carol@example.com"}])
    idp.admin_confirm_sign_up(UserPoolId=outputs["user_pool_id"], Username="carol")

    result = idp.initiate_auth(ClientId=outputs["client_id"], AuthFlow="USER_PASSWORD_AUTH",
                               AuthParameters={"USERNAME": "carol", "PASSWORD": "long enough"})

    assert result["AuthenticationResult"]["AccessToken"]
    assert outputs["issuer"] == (
        f"https://cognito-idp.{REGION}.amazonaws.com/{outputs['user_pool_id']}")
    assert httpx.get(outputs["jwks_url"]).json()["keys"]


def test_service_env_is_what_service_settings_read(moto_endpoint: str, topology: Topology,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = provision(topology, moto_endpoint, REGION)
    beta = topology.services[1]
    env = service_env(outputs, beta.name, database_url="sqlite+aiosqlite:///x.db",
                      redis_url="redis://127.0.0.1:1/0", endpoint_url=moto_endpoint,
                      topology=topology)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    settings = ServiceSettings()

    assert settings.service_name == beta.name
    assert settings.consume_queues == (beta.subscriptions[0].queue,)
    assert settings.events_topic_arn is None  # beta publishes nothing
    assert settings.cognito_client_id == outputs["client_id"]
    assert settings.aws_client_kwargs()["endpoint_url"] == moto_endpoint
    assert not settings.serve_only
    assert set(env) <= {name.upper() for name in ServiceSettings.model_fields}
    web_only = service_env(outputs, beta.name, database_url="sqlite+aiosqlite:///x.db",
                           redis_url=None, endpoint_url=moto_endpoint, topology=topology,
                           serve_only=True)
    monkeypatch.setenv("SERVE_ONLY", web_only["SERVE_ONLY"])
    assert ServiceSettings().serve_only


def test_a_process_that_leaves_the_relay_to_another_gets_no_topic(
        moto_endpoint: str, topology: Topology) -> None:
    outputs = provision(topology, moto_endpoint, REGION)
    alpha = topology.services[0]
    kwargs = {"database_url": "sqlite+aiosqlite:///x.db", "redis_url": None,
              "endpoint_url": moto_endpoint, "topology": topology}
    assert service_env(outputs, alpha.name, **kwargs)["EVENTS_TOPIC_ARN"] == (
        outputs["topics"][alpha.name])
    assert "EVENTS_TOPIC_ARN" not in service_env(outputs, alpha.name, relays=False, **kwargs)


def test_cli_writes_the_outputs_as_json(moto_endpoint: str, tmp_path, capsys) -> None:
    out = tmp_path / "outputs.json"

    main(["--endpoint", moto_endpoint, "--out", str(out)])

    written = json.loads(out.read_text())
    assert written == json.loads(capsys.readouterr().out)
    assert written["topics"]["profile"].endswith(":profile-events")
