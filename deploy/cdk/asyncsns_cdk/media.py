"""Who reads and writes which keys of the two media buckets, from the services' own
constants: the prefixes are theirs, not restated here."""

from call_svc.recorder import RECORDINGS
from call_svc.studio import SERVED_PREFIX
from post_svc.media import MEDIA_PREFIX, ORIGINALS

# task -> bucket ("uploads" | "media") -> key prefix -> "r", "w" or "rw"
MEDIA_ACCESS: dict[str, dict[str, dict[str, str]]] = {
    # Presigned POST forms are signed with the post task's role: clients upload as it.
    "post": {"uploads": {ORIGINALS: "w"}},
    # It transcodes what clients and calls uploaded into served variants.
    "media-worker": {"uploads": {ORIGINALS: "r", RECORDINGS: "r"}, "media": {MEDIA_PREFIX: "w"}},
    # Recordings go to the media worker; live HLS segments are served as they are.
    "call": {"uploads": {RECORDINGS: "w"}, "media": {f"{SERVED_PREFIX}live/": "w"}},
}
