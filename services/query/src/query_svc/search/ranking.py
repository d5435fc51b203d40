"""How both engines order results.

Posts: score = relevance * 0.5 ** min(MAX_HALVINGS, max(0, anchor - created_at) / HALF_LIFE),
ties broken by newer `created_at`, then by larger post id. Relevance is BM25 over the post text
(FTS5's `bm25()`, OpenSearch's default similarity); `anchor` is when the first page was
ranked, kept in the cursor so that every page of one search scores alike. A post a week
older than another needs twice the relevance to rank above it. Past MAX_HALVINGS
half-lives (about two years) the factor stops falling, so very old posts compete on relevance alone
and OpenSearch's 32-bit float scores never underflow to zero. A search without words
(only `#tag`, `from:`, dates, `has:media`) has relevance 0 everywhere, so it is newest first.

Messages: newest first, by `created_at` (then message id in OpenSearch, arrival in the
embedded engine: they differ only within one millisecond). In a conversation the latest
mention is usually the one wanted, and no relevance means no engine-specific scores.

Users: a tier first — 2 when a query word is the username, 1 when one is a prefix of it,
0 when the words matched the display name or bio — then more followers, then username.
"""

from datetime import timedelta

RECENCY_HALF_LIFE = timedelta(days=7)
RECENCY_MAX_HALVINGS = 100.0
