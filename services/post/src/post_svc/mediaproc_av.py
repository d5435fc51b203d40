"""ffmpeg's command lines and ffprobe's answers for audio and video: pure functions.

`mediaproc` runs these commands and turns their failures into MediaRejected; here they can
be read in one place and checked without running ffmpeg.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from post_svc.mediaproc import ProcessingLimits

_MP4, _WEBM = "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"
# Declared audio or video type -> ffprobe's format_name for bytes of that type.
AV_FORMATS = {
    "video/mp4": _MP4, "video/quicktime": _MP4, "video/webm": _WEBM,
    "audio/mpeg": "mp3", "audio/mp4": _MP4, "audio/ogg": "ogg", "audio/wav": "wav",
    "audio/webm": _WEBM,
}
# ffmpeg's -format_whitelist: no other demuxer may open an upload, so bytes that look like an
# HLS or concat playlist cannot make ffmpeg read other files or fetch URLs.
_DEMUXERS = ",".join(sorted(set(AV_FORMATS.values())))
_SEGMENT_S = 4


@dataclass(frozen=True)
class Probe:
    """What ffprobe says about a file (sizes as displayed; 0 without a video stream)."""

    format_name: str
    format_long_name: str
    duration_s: float | None
    width: int
    height: int
    has_audio: bool
    channels: int


def probe_command(src: Path) -> list[str]:
    """ffprobe describing `src` in JSON, if one of the accepted demuxers can open it."""
    return ["ffprobe", "-v", "error", "-format_whitelist", _DEMUXERS, "-print_format", "json",
            "-show_format", "-show_streams", str(src.absolute())]


def read_probe(output: str) -> Probe | None:
    """ffprobe's JSON as a Probe, or None if it is not a readable file's description."""
    try:
        info = json.loads(output)
        container, streams = info["format"], info["streams"]
        # A still picture in a video stream is cover art, not video.
        video = next((s for s in streams if s["codec_type"] == "video"
                      and not s.get("disposition", {}).get("attached_pic")), None)
        audio = next((s for s in streams if s["codec_type"] == "audio"), None)
        width, height = _displayed_size(video) if video else (0, 0)
        return Probe(format_name=container["format_name"],
                     format_long_name=container.get("format_long_name") or "another format",
                     duration_s=_seconds(container.get("duration")), width=width, height=height,
                     has_audio=audio is not None,
                     channels=int(audio.get("channels") or 2) if audio else 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _displayed_size(stream: dict) -> tuple[int, int]:
    """Width and height as played: phones store portrait video sideways plus a rotation,
    which ffmpeg applies when decoding."""
    width, height = int(stream["width"]), int(stream["height"])
    rotation = stream.get("tags", {}).get("rotate") or next(
        (data["rotation"] for data in stream.get("side_data_list", ()) if "rotation" in data), 0)
    return (height, width) if round(float(rotation)) % 180 == 90 else (width, height)


def _seconds(value: object) -> float | None:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return round(seconds, 2) if math.isfinite(seconds) and seconds > 0 else None


def _ffmpeg_input(src: Path, limits: ProcessingLimits, *options: str) -> list[str]:
    """ffmpeg reading `src` with input `options`, never past the duration limit: a stream
    recorded without its duration (MediaRecorder's WebM) is only measured once converted."""
    return ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y",
            "-format_whitelist", _DEMUXERS, *options,
            "-t", f"{limits.max_duration_s + 1:.0f}", "-i", str(src.absolute())]


def _ladder(short_side: int, limits: ProcessingLimits) -> list[int]:
    """Rendition sizes, as the shorter side (so a portrait phone video's 1080p is 1080 wide):
    the configured ones the source reaches, else the source's own, made even for x264."""
    reached = [size for size in sorted(set(limits.renditions)) if size <= short_side]
    return reached or [max(2, short_side - short_side % 2)]


def _maxrate_kbps(short_side: int) -> int:
    """A bitrate ceiling of about 5 Mbit/s at 1080p, 2.7 at 720p, 1 at 360p; CRF 23 spends
    less than that on easy pictures."""
    return round(0.14 * short_side ** 1.5)


def hls_command(src: Path, probe: Probe, limits: ProcessingLimits) -> list[str]:
    """One ffmpeg run, to be run in hls/: decode once, scale and encode every rendition, and
    write v<i>/index.m3u8 with its v<i>/seg_<n>.ts segments and master.m3u8."""
    portrait = probe.height > probe.width
    ladder = _ladder(min(probe.width, probe.height), limits)
    # Each rendition is scaled from the next larger one, which costs less than from the source.
    graph, larger = [], "[0:v:0]"
    for i in reversed(range(len(ladder))):
        size = f"{ladder[i]}:-2" if portrait else f"-2:{ladder[i]}"
        graph.append(f"{larger}scale={size}" + (f",split[v{i}][s{i}]" if i else "[v0]"))
        larger = f"[s{i}]"
    maps, streams = [], []
    for i, size in enumerate(ladder):
        kbps = _maxrate_kbps(size)
        maps += ["-map", f"[v{i}]", f"-maxrate:v:{i}", f"{kbps}k",
                 f"-bufsize:v:{i}", f"{2 * kbps}k"]
        if probe.has_audio:
            maps += ["-map", "0:a:0"]
        streams.append(f"v:{i},a:{i}" if probe.has_audio else f"v:{i}")
    return [*_ffmpeg_input(src, limits), "-filter_complex", ";".join(graph), *maps,
            "-c:v", "libx264", "-preset", limits.x264_preset, "-crf", "23", "-pix_fmt", "yuv420p",
            # Keyframes every segment and only there, at the same instants in every rendition,
            # so that players can switch renditions at any segment boundary.
            "-force_key_frames", f"expr:gte(t,n_forced*{_SEGMENT_S})", "-sc_threshold", "0",
            "-c:a", "aac", "-b:a", "128k", "-ac", "2",
            # Without this the title would even become the MPEG-TS service name.
            "-map_metadata", "-1", "-map_chapters", "-1",
            "-f", "hls", "-hls_time", str(_SEGMENT_S), "-hls_playlist_type", "vod",
            "-hls_segment_type", "mpegts", "-hls_flags", "independent_segments",
            "-master_pl_name", "master.m3u8", "-hls_segment_filename", "v%v/seg_%05d.ts",
            "-var_stream_map", " ".join(streams), "v%v/index.m3u8"]


def poster_command(src: Path, at_s: float, limits: ProcessingLimits) -> list[str]:
    """One frame as poster.jpg, at most `large_px` a side; bitexact leaves out the encoder's
    comment, and the JPEG muxer writes no EXIF."""
    fit = f"w='min(iw,{limits.large_px})':h='min(ih,{limits.large_px})'"
    return [*_ffmpeg_input(src, limits, "-ss", f"{at_s:.3f}"), "-map", "0:v:0", "-frames:v", "1",
            "-vf", f"scale={fit}:force_original_aspect_ratio=decrease",
            "-map_metadata", "-1", "-flags:v", "+bitexact", "-q:v", "3", "-update", "1",
            "poster.jpg"]


def audio_command(src: Path, probe: Probe, limits: ProcessingLimits) -> list[str]:
    """audio.m4a: AAC at 128 kbit/s, mono or stereo as the source, loudness-normalised so
    that one clip does not play far louder than the next; video (cover art) is dropped."""
    return [*_ffmpeg_input(src, limits), "-map", "0:a:0", "-vn", "-sn", "-dn",
            # Single-pass loudnorm resamples to 192 kHz internally, hence the explicit rate.
            "-af", "loudnorm=I=-16:TP=-1.5:LRA=11", "-ar", "48000",
            "-ac", "1" if probe.channels == 1 else "2", "-c:a", "aac", "-b:a", "128k",
            "-map_metadata", "-1", "-map_chapters", "-1", "-movflags", "+faststart", "audio.m4a"]


def playlist_seconds(playlist: str) -> float:
    """A media playlist's length: the sum of its segments' EXTINF durations."""
    return round(sum(float(line[8:].split(",")[0]) for line in playlist.splitlines()
                     if line.startswith("#EXTINF:")), 2)
