"""Search cursors: the sort key of a page's last hit, opaque to clients.

Pages continue *after* that key (keyset pagination), so a post that arrives between two
page requests cannot push an earlier hit onto the next page twice. A post search cursor
also keeps the moment the first page was ranked at (`anchor`), so every page scores
recency from the same instant. A cursor is bound to its query: one minted for another `q`
is refused instead of silently paging through the wrong results.
"""

import zlib
from dataclasses import dataclass
from typing import Any

from chassis.pagination import decode_cursor, encode_cursor
from chassis.problems import Problem, invalid

from .analysis import normalize


@dataclass(frozen=True)
class Position:
    key: list[Any]
    anchor: int | None = None


def _digest(kind: str, q: str) -> int:
    return zlib.crc32(f"{kind}\n{normalize(q)}".encode())


def _refused(message: str) -> Problem:
    return invalid("cursor", message, status=400)


def encode(kind: str, q: str, position: Position) -> str:
    body: dict[str, Any] = {"q": _digest(kind, q), "k": position.key}
    if position.anchor is not None:
        body["a"] = position.anchor
    return encode_cursor(body)


def decode(kind: str, q: str, cursor: str | None, types: tuple[type, ...],
           *, anchored: bool) -> Position | None:
    """The position in `cursor` (None for the first page), or a 400 problem naming `cursor`.

    `types` are the allowed types of each key element, in order (`float` also admits int).
    """
    body = decode_cursor(cursor, "q", "k")
    if body is None:
        return None
    key, anchor = body["k"], body.get("a")
    if body["q"] != _digest(kind, q):
        raise _refused("was issued for a different search")
    if not isinstance(key, list) or len(key) != len(types) or not all(
            _fits(value, kind_) for value, kind_ in zip(key, types, strict=True)):
        raise _refused("not a cursor this endpoint issued")
    if anchored and not (isinstance(anchor, int) and not isinstance(anchor, bool)):
        raise _refused("not a cursor this endpoint issued")
    return Position(key, anchor if anchored else None)


def check_limit(limit: int) -> None:
    """A page holds at least one hit (the HTTP layer also caps it)."""
    if limit < 1:
        raise invalid("limit", "must be at least 1")


def _fits(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)
