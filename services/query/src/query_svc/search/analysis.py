"""Text analysis that both engines share, so that one query finds the same posts in each.

Text is NFKC-normalized and case-folded (full width = half width, `Ｒａｍｅｎ` = `ramen`),
then cut into segments: runs of CJK characters (Han, Hiragana, Katakana, Hangul) and words
of any other script (letters, digits, combining marks, underscore). Everything else —
spaces, punctuation, emoji — only separates segments.

Matching, as the engines implement it:
- a word matches a whole word (`ramen` finds `Ramen!` but not `ramens`: no prefix matching,
  which keeps results precise and lets both engines use plain term lookups);
- a CJK run of two or more characters matches wherever it occurs inside a CJK run of the
  text, one character matches wherever that character occurs.

The embedded engine indexes each CJK run as its overlapping bigrams followed by its last
character (`ラーメン` -> `ラー ーメ メン ン`): a phrase of the query's bigrams is then exactly a
substring test, and every character begins some token, so a one-character query is a prefix
query. OpenSearch gets the segments joined by spaces and bigrams them itself (see
`opensearch.py`), so both engines see the same characters in the same segments.
"""

import re
import unicodedata
from collections.abc import Iterator

# Han (with 々〆〇), Hiragana, Katakana (not the middle dot ・, which separates), Hangul.
CJK_CHARS = (
    "\u1100-\u11ff\u3005-\u3007\u3021-\u3029\u3038-\u303b\u3041-\u3096\u3099-\u309f"
    "\u30a0-\u30fa\u30fc-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uf900-\ufaff\U00020000-\U0003134f"
)


def _combining_marks() -> str:
    """Combining marks (BMP) as a character class body: they belong to the word before them,
    as in Unicode word segmentation, so Devanagari or Thai vowel signs do not split words."""
    marks = [c for c in range(0x10000) if unicodedata.category(chr(c)).startswith("M")]
    return "".join(re.escape(chr(c)) for c in marks)


_SEGMENT = re.compile(
    rf"(?P<cjk>[{CJK_CHARS}]+)|(?P<word>(?:[^\W{CJK_CHARS}]|[{_combining_marks()}])+)"
)


def normalize(text: str) -> str:
    """NFKC and case folding, NFKC again because folding can leave unnormalized text."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def segments(normalized: str) -> Iterator[tuple[str, bool]]:
    """(segment, is_cjk) pairs of already normalized text, in order."""
    for match in _SEGMENT.finditer(normalized):
        cjk = match.group("cjk")
        yield (cjk, True) if cjk else (match.group("word"), False)


def bigrams(run: str) -> list[str]:
    """Overlapping character pairs of a CJK run; a single character stands alone."""
    if len(run) == 1:
        return [run]
    return [run[i:i + 2] for i in range(len(run) - 1)]


def index_tokens(text: str) -> str:
    """The embedded engine's token stream for `text`: words, and CJK bigrams plus each run's
    last character, separated by single spaces."""
    tokens: list[str] = []
    for segment, cjk in segments(normalize(text)):
        if cjk:
            if len(segment) > 1:
                tokens.extend(bigrams(segment))
            tokens.append(segment[-1])
        else:
            tokens.append(segment)
    return " ".join(tokens)


def segmented(text: str) -> str:
    """Normalized segments joined by spaces: what OpenSearch's analyzer is given."""
    return " ".join(segment for segment, _ in segments(normalize(text)))
