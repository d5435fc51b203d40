"""Cursor pagination: `?limit=` and an opaque `?cursor=`, answered as `{items, next_cursor}`."""

import base64
import json
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from .problems import invalid

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=100, description="page size (1-100)")]
Cursor = Annotated[str | None, Query(max_length=512, description="opaque cursor from next_cursor")]


class Page(BaseModel, Generic[T]):
    """One page of a list; `next_cursor` is null on the last page."""

    items: list[T]
    next_cursor: str | None


def encode_cursor(position: dict[str, Any]) -> str:
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, *keys: str) -> dict[str, Any] | None:
    """The position a cursor names, or a 400 problem naming `cursor` if it is not ours."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
    except ValueError as exc:
        raise invalid("cursor", "not a cursor this endpoint issued", status=400) from exc
    if not isinstance(position, dict) or any(k not in position for k in keys):
        raise invalid("cursor", "not a cursor this endpoint issued", status=400)
    return position
