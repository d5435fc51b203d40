"""What the server accepts as a session description or an ICE candidate, read with aiortc's
own parser. The parser is lenient (garbage parses as a description with no media), so a
description must also start with `v=0`, fit the size limit, and have at least one audio, video
or data section, each with ICE credentials and a DTLS fingerprint: what a WebRTC peer needs
before any media can flow.
"""

from typing import Any

from aiortc import RTCIceCandidate
from aiortc.sdp import SessionDescription, candidate_from_sdp

from chassis.problems import invalid

KINDS = {"audio", "video", "application"}


def check_sdp(sdp: Any, max_bytes: int, field: str = "sdp",
              status: int = 422) -> SessionDescription:
    """The parsed description, or a Problem naming `field`."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise invalid(field, "a session description (SDP) is required", status)
    if len(sdp.encode()) > max_bytes:
        raise invalid(field, f"at most {max_bytes} bytes", 413)
    if not sdp.lstrip().startswith("v=0"):
        raise invalid(field, "not a session description: it must start with v=0", status)
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception:
        raise invalid(field, "the session description does not parse", status) from None
    if not parsed.media:
        raise invalid(field, "the session description has no media section", status)
    for media in parsed.media:
        if media.kind not in KINDS:
            raise invalid(field, f"unsupported media section {media.kind!r}", status)
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise invalid(field, f"the {media.kind} section has no ICE credentials", status)
        if media.dtls is None or not media.dtls.fingerprints:
            raise invalid(field, f"the {media.kind} section has no DTLS fingerprint", status)
    return parsed


def check_candidate(candidate: Any, field: str = "candidate") -> RTCIceCandidate | None:
    """A trickled candidate as browsers send it ({candidate, sdpMid, sdpMLineIndex}); None for
    the empty end-of-candidates marker."""
    if not isinstance(candidate, dict):
        raise invalid(field, "an object {candidate, sdpMid, sdpMLineIndex}")
    line = candidate.get("candidate")
    if not isinstance(line, str) or len(line) > 1024:
        raise invalid(field, "candidate: a string of at most 1024 characters")
    mid, index = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
    if mid is not None and (not isinstance(mid, str) or len(mid) > 32):
        raise invalid(field, "sdpMid: a short string")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)
                              or not 0 <= index < 64):
        raise invalid(field, "sdpMLineIndex: a small number")
    if not line:
        return None
    try:
        parsed = candidate_from_sdp(line.removeprefix("a=").removeprefix("candidate:"))
    except Exception:
        raise invalid(field, "the candidate does not parse") from None
    parsed.sdpMid, parsed.sdpMLineIndex = mid, index
    return parsed
