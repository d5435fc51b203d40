"""The search string `q`, parsed once into a structure that each engine translates.

Posts: words are ANDed; `"exact phrase"`; `-word` and `-"phrase"` exclude; `from:username`
(several: any of them); `#tag`; `since:YYYY-MM-DD` and `until:YYYY-MM-DD` (whole UTC days,
both inclusive); `has:media`. Repeated `since:`/`until:` keep the narrowest range.

A whitespace-separated word whose segments change script (`iPhone買った`) needs each part;
the Latin parts of one word or one quoted phrase must be adjacent (`e-mail` is the phrase
`e mail`); inside a quoted phrase, CJK runs separated by spaces are each matched on
their own. A CJK word of three or more characters ending in an inflecting syllable (any
hiragana, or the Korean `다`) also matches without that syllable, so the dictionary form
`美味しい` finds `美味しかった`; exact occurrences rank higher. This is narrower than
"strip the last character of any CJK word" on purpose: `ラーメン屋` must not find every
`ラーメン`. Quoted phrases and exclusions are exact.

Chat messages take the same words, phrases, exclusions, `from:`, `since:` and `until:`.
Messages have no tag list, so `#tag` there requires the tag's words in the text;
`has:media` is refused.
"""

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

from chassis.problems import Problem, invalid
from chassis.text import normalize_tag

from .analysis import normalize, segments

MAX_QUERY_CHARS = 500

_LEXEME = re.compile(r'(-?)"([^"]*)(?:"|$)|([^\s"]+)')
_TAG = re.compile(r"[\w\u30fc\u30fb\u00b7]{1,100}")
_USERNAME = re.compile(r"[a-z0-9_]{1,30}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_OPERATORS = ("from:", "since:", "until:", "has:", "#")
_HIRAGANA = re.compile(r"[\u3041-\u3096]")


@dataclass(frozen=True)
class Match:
    """One thing a document must contain: adjacent words, or a CJK substring."""

    text: str  # normalized: words joined by single spaces, or one CJK run
    cjk: bool
    stem: str | None = None  # a CJK alternative that also matches, ranked lower


@dataclass(frozen=True)
class PostQuery:
    required: tuple[Match, ...] = ()
    excluded: tuple[tuple[Match, ...], ...] = ()  # a document matching any group is dropped
    authors: tuple[str, ...] = ()  # lowercase usernames; any of them
    tags: tuple[str, ...] = ()  # normalized; all of them
    since: datetime | None = None  # inclusive
    before: datetime | None = None  # exclusive: midnight after the `until:` day
    has_media: bool = False

    @property
    def has_text(self) -> bool:
        return bool(self.required)


@dataclass(frozen=True)
class UserTerm:
    """A word of a user search: a username prefix, or text in the display name or bio."""

    matches: tuple[Match, ...]
    username: str | None  # the word as a username prefix, when it can be one


@dataclass(frozen=True)
class UserQuery:
    terms: tuple[UserTerm, ...]

    @property
    def usernames(self) -> tuple[str, ...]:
        return tuple(t.username for t in self.terms if t.username)


def _bad(message: str) -> Problem:
    return invalid("q", message)


def _checked(q: str) -> str:
    if not q or not q.strip():
        raise _bad("must not be empty")
    if len(q) > MAX_QUERY_CHARS:
        raise _bad(f"must be at most {MAX_QUERY_CHARS} characters")
    # Phones type curly quotes; they mean the same as straight ones here.
    return normalize(q).replace("\u201c", '"').replace("\u201d", '"')


def _stem(run: str) -> str | None:
    last = run[-1]
    if len(run) >= 3 and (_HIRAGANA.fullmatch(last) or last == "다"):
        return run[:-1]
    return None


def matches(text: str, *, exact: bool) -> tuple[Match, ...]:
    """What `text` (normalized) requires: adjacent words grouped, each CJK run on its own."""
    found: list[Match] = []
    words: list[str] = []
    for segment, cjk in segments(text):
        if not cjk:
            words.append(segment)
            continue
        if words:
            found.append(Match(" ".join(words), cjk=False))
            words = []
        found.append(Match(segment, cjk=True, stem=None if exact else _stem(segment)))
    if words:
        found.append(Match(" ".join(words), cjk=False))
    return tuple(found)


def _day(value: str, operator: str) -> date:
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise _bad(f"{operator} expects a date as YYYY-MM-DD, not {value!r}") from None


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


class _PostParser:
    def __init__(self) -> None:
        self.required: list[Match] = []
        self.excluded: list[tuple[Match, ...]] = []
        self.authors: list[str] = []
        self.tags: list[str] = []
        self.since: date | None = None
        self.until: date | None = None
        self.has_media = False

    def phrase(self, text: str, negated: bool) -> None:
        found = matches(text, exact=True)
        if negated and found:
            self.excluded.append(found)
        elif found:
            self.required.extend(found)

    def word(self, lexeme: str) -> None:
        if lexeme.startswith("-") and len(lexeme) > 1:
            rest = lexeme[1:]
            if rest.startswith(_OPERATORS):
                raise _bad(f"only words and phrases can be excluded, not {rest!r}")
            if found := matches(rest, exact=True):
                self.excluded.append(found)
        elif lexeme.startswith("from:"):
            name = lexeme[5:].lstrip("@")
            if not _USERNAME.fullmatch(name):
                raise _bad(f"from: expects a username, not {name!r}")
            self.authors.append(name)
        elif lexeme.startswith("since:"):
            day = _day(lexeme[6:], "since:")
            self.since = max(day, self.since or day)
        elif lexeme.startswith("until:"):
            day = _day(lexeme[6:], "until:")
            self.until = min(day, self.until or day)
        elif lexeme.startswith("has:"):
            if lexeme != "has:media":
                raise _bad(f"unknown filter {lexeme!r} (has:media is the one there is)")
            self.has_media = True
        elif lexeme.startswith("#") and (tag := _TAG.match(lexeme, 1)) and not tag[0].isdigit():
            self.tags.append(normalize_tag(tag[0]))
            self.required.extend(matches(lexeme[tag.end():], exact=False))
        else:
            self.required.extend(matches(lexeme, exact=False))

    def result(self) -> PostQuery:
        if self.since and self.until and self.since > self.until:
            raise _bad("since: is after until:")
        positive = (self.required or self.authors or self.tags or self.since or self.until
                    or self.has_media)
        if not positive and self.excluded:
            raise _bad("needs a word, phrase or filter besides the exclusions")
        if not positive:
            raise _bad("has nothing to search for (symbols and emoji are not searchable)")
        return PostQuery(
            required=tuple(dict.fromkeys(self.required)),
            excluded=tuple(dict.fromkeys(self.excluded)),
            authors=tuple(dict.fromkeys(self.authors)),
            tags=tuple(dict.fromkeys(self.tags)),
            since=_midnight(self.since) if self.since else None,
            before=_midnight(self.until + timedelta(days=1)) if self.until else None,
            has_media=self.has_media,
        )


@lru_cache(maxsize=4096)
def parse_post_query(q: str) -> PostQuery:
    """Parse a post search, or raise a 422 problem naming `q` that says what is wrong.
    (Popular searches repeat, and the result is immutable, so parses are kept.)"""
    parser = _PostParser()
    for negated, phrase, word in _LEXEME.findall(_checked(q)):
        if word:
            parser.word(word)
        else:
            parser.phrase(phrase, bool(negated))
    return parser.result()


@lru_cache(maxsize=1024)
def parse_message_query(q: str) -> PostQuery:
    """Parse a message search (a post search's structure without tags or media), or raise
    a 422 problem naming `q`."""
    query = parse_post_query(q)
    if query.has_media:
        raise _bad("has:media is not a filter for messages")
    tag_words = tuple(m for tag in query.tags for m in matches(tag, exact=True))
    return replace(query, required=tuple(dict.fromkeys(query.required + tag_words)), tags=())


@lru_cache(maxsize=1024)
def parse_user_query(q: str) -> UserQuery:
    """Parse a user search: every word must match the username (as a prefix, `@` optional),
    the display name or the bio."""
    terms: list[UserTerm] = []
    for lexeme in _checked(q).replace('"', " ").split():
        word = lexeme.removeprefix("@")
        found = matches(word, exact=True)
        username = word if _USERNAME.fullmatch(word) else None
        if found or username:
            terms.append(UserTerm(found, username))
    if not terms:
        raise _bad("needs a name or word to search for")
    return UserQuery(tuple(dict.fromkeys(terms)))
