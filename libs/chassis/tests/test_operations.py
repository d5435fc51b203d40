"""Every service answers /healthz, /readyz and /metrics without any code of its own."""

from fastapi import APIRouter

from chassis.testing import wait_until

router = APIRouter()


@router.get("/ping")
async def ping() -> dict[str, str]:
    """A route to be measured."""
    return {"pong": "yes"}


async def test_healthz_answers_while_the_process_runs(serve):
    async with serve() as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_database_and_the_background_loops(serve, wire, moto_endpoint):
    topic = wire().topic_arn
    async with serve(events_topic_arn=topic, aws_endpoint_url=moto_endpoint) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "outbox-relay": "ok", "loop-lag": "ok"}


async def test_metrics_expose_request_latency_and_outbox_lag(serve, wire, moto_endpoint):
    topic = wire().topic_arn
    async with serve(router, events_topic_arn=topic, aws_endpoint_url=moto_endpoint) as client:
        assert (await client.get("/ping")).status_code == 200
        response = await client.get("/metrics")

        async def relay_reported() -> bool:
            return 'outbox_lag_seconds{service="chassis-tests"}' in (
                await client.get("/metrics")).text

        await wait_until(relay_reported, "the relay reported its lag")
        text = (await client.get("/metrics")).text
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert ('http_request_duration_seconds_count{method="GET",route="/ping",'
            'service="chassis-tests",status="200"}') in text
    assert 'outbox_lag_seconds{service="chassis-tests"}' in text
    assert 'outbox_pending_events{service="chassis-tests"}' in text
    for family in ("consumer_lag_seconds", "consumer_messages_total", "dlq_depth_messages"):
        assert f"# TYPE {family} " in text
