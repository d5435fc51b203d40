"""Sign-up, confirmation, login and refresh: /api/auth/*."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, EmailStr, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from chassis.db import Database, DatabaseDep, utcnow
from chassis.events import new_event
from chassis.idempotency import IdempotencyKey, once
from chassis.outbox import add_event
from chassis.problems import invalid

from .cognito import Accounts
from .domain import DISPLAY_NAME_MAX, USERNAME, USERNAME_RULE, password_problem
from .events import PRODUCER, ProfileCreated
from .models import Base, Profile

router = APIRouter(prefix="/api/auth", tags=["auth"])
OUTBOX = Base.metadata.tables["outbox"]


async def _accounts(request: Request) -> Accounts:
    return request.app.state.accounts


AccountsDep = Annotated[Accounts, Depends(_accounts)]


class SignUp(BaseModel):
    username: str = Field(max_length=30, description=USERNAME_RULE)
    email: EmailStr
    password: str = Field(max_length=256)
    display_name: str | None = Field(None, min_length=1, max_length=DISPLAY_NAME_MAX)

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not USERNAME.fullmatch(value):
            raise ValueError(f"must be {USERNAME_RULE}")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        problem = password_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class SignedUp(BaseModel):
    user_id: str
    username: str
    confirmed: bool


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=256)


class Confirmation(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    code: str = Field(min_length=1, max_length=32)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=8192)


class Tokens(BaseModel):
    access_token: str
    id_token: str | None
    refresh_token: str | None
    expires_in: int
    token_type: str = "Bearer"


@router.post("/signup", status_code=status.HTTP_201_CREATED, response_model=SignedUp)
async def sign_up(body: SignUp, db: DatabaseDep, accounts: AccountsDep,
                  idempotency_key: IdempotencyKey = None) -> SignedUp:
    """Create an account and its profile; a repeat with the same Idempotency-Key is answered
    with the first response."""
    # The password stays out of the stored fingerprint: it must never rest in our tables.
    request = body.model_dump(mode="json", exclude={"password"})

    async def create() -> dict:
        return (await _create_account(body, db, accounts)).model_dump()

    return SignedUp(**await once(db, Base.metadata, scope="signup", key=idempotency_key,
                                 request=request, create=create))


async def _create_account(body: SignUp, db: Database, accounts: Accounts) -> SignedUp:
    async with db.sessions() as session:
        taken = await session.scalar(
            select(Profile.user_id).where(Profile.username == body.username))
    if taken:
        raise invalid("username", "is already taken", status=409)
    user_id, confirmed = await accounts.sign_up(
        username=body.username, email=str(body.email), password=body.password)
    profile = Profile(user_id=user_id, username=body.username, email=str(body.email),
                      display_name=body.display_name or body.username, bio="",
                      created_at=utcnow(), updated_at=utcnow())
    try:
        async with db.transaction() as session:
            session.add(profile)
            await session.flush()
            await add_event(session, OUTBOX, new_event(
                ProfileCreated(user_id=user_id, username=profile.username,
                               display_name=profile.display_name, created_at=profile.created_at),
                producer=PRODUCER, subject=f"user:{user_id}", actor=user_id))
    except IntegrityError as error:
        await accounts.delete(body.username)
        raise invalid("username", "is already taken", status=409) from error
    return SignedUp(user_id=user_id, username=body.username, confirmed=confirmed)


@router.post("/confirm", status_code=status.HTTP_204_NO_CONTENT)
async def confirm(body: Confirmation, accounts: AccountsDep) -> None:
    """Confirm an account with the code sent by email (when the pool does not auto-confirm)."""
    await accounts.confirm(username=body.username, code=body.code)


@router.post("/login", response_model=Tokens)
async def log_in(body: Credentials, request: Request, accounts: AccountsDep) -> Tokens:
    """Exchange username and password for tokens (attempts per username are rate limited)."""
    await request.app.state.login_limit.hit(body.username.lower())
    return Tokens(**await accounts.log_in(username=body.username, password=body.password))


@router.post("/refresh", response_model=Tokens)
async def refresh(body: RefreshRequest, accounts: AccountsDep) -> Tokens:
    """Exchange a refresh token for fresh access and ID tokens."""
    return Tokens(**await accounts.refresh(body.refresh_token))
