"""Wiring: build the post service's app from its settings (uvicorn --factory)."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chassis.app import ServiceSpec, create_app
from chassis.problems import Problem, invalid, problem_response

from . import graph, media, posts
from .domain import Limits, PostRuleBroken
from .models import Base
from .settings import PostSettings

GRAPH_QUEUE = "post-graph"


async def _rule_broken(request: Request, error: Exception) -> JSONResponse:
    """A rule the domain refused becomes a problem response naming the field at fault."""
    assert isinstance(error, PostRuleBroken)
    problem = (invalid(error.field, error.message, error.status) if error.field
               else Problem(error.status, error.message))
    return problem_response(problem, request)


def build_app(settings: PostSettings | None = None) -> FastAPI:
    """The post service: posts, their edit history, likes and replies."""
    settings = settings or PostSettings()
    app = create_app(settings, ServiceSpec(
        name="post", metadata=Base.metadata, routers=[posts.router, media.router],
        consumers={GRAPH_QUEUE: graph.HANDLERS},
        description="Posts and replies: create, edit with history, delete, like; uploads."))
    app.state.limits = Limits(text_max=settings.post_text_max,
                              content_warning_max=settings.content_warning_max,
                              media_max=settings.media_per_post_max)
    app.state.media_limits = media.MediaLimits.from_settings(settings)
    app.state.presigner = media.Presigner(settings)
    app.add_exception_handler(PostRuleBroken, _rule_broken)
    return app
