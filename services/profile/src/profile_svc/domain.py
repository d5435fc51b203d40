"""Account and social-graph rules, free of I/O."""

import re
from dataclasses import dataclass

USERNAME = re.compile(r"^[a-z0-9_]{3,30}$")
USERNAME_RULE = "3-30 characters of a-z, 0-9 and _"
PASSWORD_MIN, PASSWORD_MAX = 8, 256
PASSWORD_RULE = f"{PASSWORD_MIN}-{PASSWORD_MAX} characters"
DISPLAY_NAME_MAX = 50
BIO_MAX = 500


def password_problem(password: str) -> str | None:
    """Why a password is refused, or None: length only, like the user pool's policy
    (NIST SP 800-63B: composition rules make passwords weaker, length makes them stronger)."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"must be {PASSWORD_RULE}"
    if not password.strip():
        return "must not be only white space"
    return None


@dataclass(frozen=True)
class Relationship:
    """How the caller stands to another user."""

    following: bool = False
    followed_by: bool = False
    blocking: bool = False
    blocked_by: bool = False
    muting: bool = False


class GraphRuleBroken(Exception):
    """A graph change the rules forbid; `status` says how the API reports it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def check_follow(actor: str, target: str, relationship: Relationship) -> None:
    """May `actor` follow `target`? Raises GraphRuleBroken if not."""
    if actor == target:
        raise GraphRuleBroken(422, "you cannot follow yourself")
    if relationship.blocked_by:
        raise GraphRuleBroken(403, "this user has blocked you")
    if relationship.blocking:
        raise GraphRuleBroken(403, "unblock this user before following them")


def check_not_self(actor: str, target: str, verb: str) -> None:
    if actor == target:
        raise GraphRuleBroken(422, f"you cannot {verb} yourself")
