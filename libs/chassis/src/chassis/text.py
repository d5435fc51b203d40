"""Text rules shared by writers and readers: hashtags and mentions, Unicode-aware."""

import re
import unicodedata

# A tag is letters, digits, marks and underscores in any script (`#ラーメン`, `#café`), not
# all digits. It may follow CJK text directly (`今日の#ラーメン`), but not a Latin letter or
# digit, so that `a#b` and URLs' fragments (`page#section`) are not tags. The long vowel mark
# and middle dot count as word characters.
_WORD = r"[\w\u30fc\u30fb\u00b7]"
HASHTAG = re.compile(rf"(?<![A-Za-z0-9_&/#＃])[#＃]({_WORD}{{1,100}})")
MENTION = re.compile(r"(?<![\w@/])@([A-Za-z0-9_]{3,30})\b")


def normalize_tag(tag: str) -> str:
    """One spelling per tag: NFKC (full width to half width) and case folded."""
    return unicodedata.normalize("NFKC", tag).casefold().lstrip("#")


def hashtags(text: str) -> list[str]:
    """Normalized tags of `text`, first occurrence order, without duplicates."""
    found = (normalize_tag(m) for m in HASHTAG.findall(text))
    return list(dict.fromkeys(t for t in found if not t.isdigit()))


def mentions(text: str) -> list[str]:
    """Usernames mentioned as `@name`, lowercase, first occurrence order, without duplicates."""
    return list(dict.fromkeys(m.lower() for m in MENTION.findall(text)))
