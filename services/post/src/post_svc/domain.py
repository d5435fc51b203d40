"""What a post may say and who may change it: rules free of I/O."""

import re
from dataclasses import dataclass

from chassis.text import hashtags, mentions

# PostgreSQL cannot store NUL, and a lone surrogate (valid in JSON's \u escapes) cannot be
# encoded as UTF-8: refused here, they are bad input; let through, they fail in the database.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Limits:
    """How long a post may be and how much it may carry (from the service's settings)."""

    text_max: int = 5000
    content_warning_max: int = 500
    media_max: int = 4


class PostRuleBroken(Exception):
    """A post or change the rules refuse; `field` names the input at fault, if one is."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Body:
    """A post's text with the tags and mentions found in it."""

    text: str
    hashtags: list[str]
    mentions: list[str]


@dataclass(frozen=True)
class Draft:
    """A new post that passed the rules."""

    body: Body
    visibility: str
    reply_to: str | None
    media_ids: list[str]
    content_warning: str | None


@dataclass(frozen=True)
class Revision:
    """An edit that passed the rules: a new body, a new content warning, or both."""

    body: Body | None
    content_warning: str | None
    sets_content_warning: bool


def compose(text: str, limits: Limits) -> Body:
    """The post's text, trimmed; it must say something and stay within the limit."""
    text = _storable(text, "text").strip()
    if not text:
        raise PostRuleBroken(422, "must not be empty", "text")
    if len(text) > limits.text_max:  # code points, as people count characters
        raise PostRuleBroken(422, f"must be at most {limits.text_max} characters", "text")
    return Body(text, hashtags(text), mentions(text))


def content_warning(value: str | None, limits: Limits) -> str | None:
    """A trimmed content warning, or None when there is none (blank clears it)."""
    if value is None:
        return None
    value = _storable(value, "content_warning").strip()
    if len(value) > limits.content_warning_max:
        raise PostRuleBroken(
            422, f"must be at most {limits.content_warning_max} characters", "content_warning")
    return value or None


def draft(*, text: str, visibility: str, reply_to: str | None, media_ids: list[str],
          content_warning_text: str | None, limits: Limits) -> Draft:
    """Check a new post against the rules."""
    if len(media_ids) > limits.media_max:
        raise PostRuleBroken(422, f"at most {limits.media_max} per post", "media_ids")
    if len(set(media_ids)) != len(media_ids):
        raise PostRuleBroken(422, "must not repeat a media id", "media_ids")
    return Draft(compose(text, limits), visibility, reply_to, list(media_ids),
                 content_warning(content_warning_text, limits))


def revise(*, given: set[str], text: str | None, content_warning_text: str | None,
           limits: Limits) -> Revision:
    """Check an edit: fields left out stay as they are; `content_warning: null` clears it."""
    if not given & {"text", "content_warning"}:
        raise PostRuleBroken(422, "give text, content_warning or both", "body")
    if "text" in given and text is None:
        raise PostRuleBroken(422, "cannot be null; leave it out to keep the text", "text")
    return Revision(body=compose(text, limits) if text is not None else None,
                    content_warning=content_warning(content_warning_text, limits),
                    sets_content_warning="content_warning" in given)


def check_author(author_id: str, caller: str, verb: str) -> None:
    """Only the author may change a post."""
    if author_id != caller:
        raise PostRuleBroken(403, f"only the author may {verb} this post")


def check_not_blocked(blocked_by_author: bool, what: str) -> None:
    """Someone the author blocked may not reply to or like the author's posts."""
    if blocked_by_author:
        raise PostRuleBroken(403, f"the author of this post has blocked you; you cannot {what}")


def can_see(*, visibility: str, author_id: str, mentions: list[str], caller: str,
            caller_username: str, follows_author: bool) -> bool:
    """Whether the caller may see (and so reply to or like) a post: public posts, their
    own, followers-only posts of people they follow, direct posts that mention them."""
    return (visibility == "public" or author_id == caller
            or (visibility == "followers" and follows_author)
            or (visibility == "direct" and caller_username.lower() in mentions))


def _storable(value: str, field: str) -> str:
    if _UNSTORABLE.search(value):
        raise PostRuleBroken(422, "contains a NUL character or an unpaired surrogate", field)
    return value
