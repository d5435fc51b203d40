"""The stack's health endpoint: ready only when every replica of every service is ready."""

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic_settings import BaseSettings, SettingsConfigDict

from chassis.problems import Problem, problem_response


class HealthSettings(BaseSettings):
    """HEALTH_TARGETS: {"profile": ["http://127.0.0.1:8101", ...], ...}"""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    health_targets: dict[str, list[str]] = {}
    health_timeout_s: float = 2.0


async def replica_status(http: httpx.AsyncClient, base_url: str, timeout_s: float) -> str:
    """"ok", or why this replica is not ready."""
    try:
        response = await http.get(f"{base_url.rstrip('/')}/readyz", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"{base_url}: {type(exc).__name__}"
    return "ok" if response.status_code == 200 else f"{base_url}: {response.status_code}"


async def service_status(http: httpx.AsyncClient, replicas: list[str], timeout_s: float) -> str:
    """"ok" when every replica is ready, else the failing replicas and why."""
    results = await asyncio.gather(*(replica_status(http, url, timeout_s) for url in replicas))
    failed = [result for result in results if result != "ok"]
    return "ok" if replicas and not failed else "; ".join(failed) or "no replicas"


def build_app(settings: HealthSettings | None = None) -> FastAPI:
    """The health app (uvicorn --factory stack.health:build_app)."""
    settings = settings or HealthSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient() as http:
            app.state.http = http
            yield

    app = FastAPI(title="asyncsns health", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the aggregator answers, whether or not the services are ready."""
        return {"status": "ok"}

    @app.get("/api/health")
    async def health(request: Request) -> Response:
        """Whether every service is ready, service by service."""
        names = list(settings.health_targets)
        statuses = await asyncio.gather(*(
            service_status(request.app.state.http, settings.health_targets[name],
                           settings.health_timeout_s) for name in names))
        services = dict(zip(names, statuses, strict=True))
        if all(status == "ok" for status in statuses):
            return JSONResponse({"status": "ok", "services": services})
        failed = ", ".join(name for name, status in services.items() if status != "ok")
        return problem_response(Problem(503, f"not ready: {failed}", services=services), request)

    return app


def main(argv: list[str] | None = None) -> None:
    """`python -m stack.health [--host H] [--port P]` with HEALTH_TARGETS in the environment."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    uvicorn.run(build_app(), host=args.host, port=args.port, access_log=False)


if __name__ == "__main__":
    main()
