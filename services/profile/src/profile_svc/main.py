"""Wiring: build the profile service's app from its settings (uvicorn --factory)."""

from fastapi import FastAPI

from chassis.app import ServiceSpec, create_app
from chassis.cache import ViewCache
from chassis.ratelimit import RateLimit

from . import accounts, avatars, post_counts, profiles
from .cognito import Accounts
from .models import Base
from .settings import ProfileSettings


async def _connect(app: FastAPI) -> None:
    settings: ProfileSettings = app.state.settings
    idp = await app.state.exit_stack.enter_async_context(
        app.state.aws.client("cognito-idp", **settings.aws_client_kwargs()))
    app.state.accounts = Accounts(idp, pool_id=settings.cognito_user_pool_id,
                                  client_id=settings.cognito_client_id,
                                  auto_confirm=settings.auto_confirm_signups)
    app.state.profile_cache = ViewCache(app.state.redis, prefix="profile:view:v2:",
                                        ttl_s=settings.profile_cache_ttl_s)
    app.state.exit_stack.push_async_callback(app.state.profile_cache.close)
    app.state.forget_profile.cache = app.state.profile_cache
    app.state.login_limit = RateLimit(app.state.redis, name="login",
                                      limit=settings.login_attempts_per_window,
                                      window_s=settings.login_window_s)


def build_app(settings: ProfileSettings | None = None) -> FastAPI:
    """The profile service: accounts, profiles and the social graph."""
    forget = post_counts.Forget()
    app = create_app(settings or ProfileSettings(), ServiceSpec(
        name="profile", metadata=Base.metadata, routers=[accounts.router, profiles.router],
        consumers={"profile-post": post_counts.handlers(forget) | avatars.handlers(forget)},
        on_startup=_connect,
        description="Accounts (a backend for Cognito), profiles, follows, blocks and mutes."))
    app.state.forget_profile = forget
    return app
