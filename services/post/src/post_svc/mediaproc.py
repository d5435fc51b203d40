"""Turning an uploaded media file into what clients are served: pure processing, no cloud.

`process` reads one file and writes its variants into a directory: images become two
metadata-free WebP sizes and a blurhash, video an HLS ladder and a poster, audio one
loudness-normalised AAC file. Bytes are checked against the declared type whatever the
client said, and anything wrong with them becomes `MediaRejected` with a sentence the user
can be shown. Storage, queues and records are the media worker's business, not this module's.
"""

import io
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import blurhash
import pillow_heif
from PIL import ExifTags, Image, ImageCms, ImageOps

from post_svc.mediaproc_av import (
    AV_FORMATS,
    Probe,
    audio_command,
    hls_command,
    playlist_seconds,
    poster_command,
    probe_command,
    read_probe,
)

# Registering a Pillow plugin is local and idempotent; HEIC is what iPhones upload.
pillow_heif.register_heif_opener()

# Declared image type -> Pillow formats its bytes may have. MPO is how Pillow's JPEG opener
# names the JPEGs that phones append a preview or depth map to.
IMAGE_FORMATS = {
    "image/jpeg": ("JPEG", "MPO"),
    "image/png": ("PNG",),
    "image/webp": ("WEBP",),
    "image/gif": ("GIF",),
    "image/heic": ("HEIF",),
}
# Declared image type -> (offset, bytes) its files begin with: a file that does, but that
# Pillow cannot open, is a damaged image rather than something else.
_SIGNATURES = {
    "image/jpeg": (0, b"\xff\xd8\xff"),
    "image/png": (0, b"\x89PNG\r\n\x1a\n"),
    "image/webp": (8, b"WEBP"),
    "image/gif": (0, b"GIF8"),
    "image/heic": (4, b"ftyp"),
}
# Only these plugins may parse an upload: less decoder surface, and nothing exotic gets near
# a helper program (Pillow's EPS plugin would start Ghostscript).
_OPENERS = ("JPEG", "PNG", "WEBP", "GIF", "HEIF")
# What Pillow's plugins raise on malformed input (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, IndexError, MemoryError,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)
_DAMAGED = "The image is damaged or truncated and cannot be decoded."
_HLS_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_WEBP = {"quality": 80, "method": 4}

log = logging.getLogger("post.media")


class MediaRejected(Exception):
    """The bytes are not acceptable media; `reason` is a short user-facing sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ProcessingLimits:
    """What the worker accepts and produces (from the service's settings)."""

    max_image_side: int = 10_000
    max_image_pixels: int = 50_000_000
    max_video_side: int = 4096
    max_duration_s: float = 3600.0
    thumb_px: int = 320
    large_px: int = 1600
    renditions: tuple[int, ...] = (240, 360, 720, 1080)
    x264_preset: str = "veryfast"
    timeout_s: float = 900.0


@dataclass(frozen=True)
class OutputFile:
    """One written file: its path under the output directory and how to serve it."""

    path: str
    content_type: str


@dataclass(frozen=True)
class Processed:
    """What processing found out about the media and every file it wrote."""

    kind: str
    width: int | None
    height: int | None
    duration_s: float | None
    blurhash: str | None
    variants: dict[str, str]
    files: tuple[OutputFile, ...]


def _normalised(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def kind_of(content_type: str) -> str | None:
    """"image", "video" or "audio" for a declared type this module handles, else None."""
    declared = _normalised(content_type)
    if declared in IMAGE_FORMATS or declared in AV_FORMATS:
        return declared.split("/")[0]
    return None


def process(src: Path, content_type: str, out_dir: Path,
            limits: ProcessingLimits = ProcessingLimits()) -> Processed:
    """Check `src` against its declared type and write its variants under `out_dir`.

    Synchronous and CPU-bound: run it in a worker thread or process. Raises MediaRejected
    for media that is bad, too big or not what was declared; a missing ffmpeg still raises.
    """
    declared = _normalised(content_type)
    kind = kind_of(declared)
    if kind is None:
        raise MediaRejected(f"{content_type} is not a supported media type.")
    if src.stat().st_size == 0:
        raise MediaRejected("The file is empty.")
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "image":
        return _process_image(src, declared, out_dir, limits)
    if kind == "video":
        return _process_video(src, declared, out_dir, limits)
    return _process_audio(src, declared, out_dir, limits)


def _process_image(src: Path, declared: str, out_dir: Path,
                  limits: ProcessingLimits) -> Processed:
    """`large` and `thumb` WebP variants, upright and without metadata, and a blurhash.

    Of an animated GIF or WebP only the first frame is kept: the variants are stills.
    """
    large, width, height = _decode(src, declared, limits)
    large.thumbnail((limits.large_px, limits.large_px))
    thumb = large.copy()
    thumb.thumbnail((limits.thumb_px, limits.thumb_px))
    _save_webp(large, out_dir / "large.webp")
    _save_webp(thumb, out_dir / "thumb.webp")
    return Processed(
        kind="image", width=width, height=height, duration_s=None,
        blurhash=_blurhash(thumb), variants={"thumb": "thumb.webp", "large": "large.webp"},
        files=(OutputFile("thumb.webp", "image/webp"), OutputFile("large.webp", "image/webp")))


def _decode(src: Path, declared: str, limits: ProcessingLimits) -> tuple[Image.Image, int, int]:
    """The fully decoded picture, upright, in sRGB RGB(A), and the upright original's size.

    Dimensions are checked from the header, before any pixel is decoded. A JPEG is decoded
    at the smallest power-of-two scale that still covers `large_px`, which saves most of the
    decoding time of a camera photo; the whole stream is still read, so truncation shows.
    """
    try:
        img = Image.open(src, formats=_OPENERS)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (twice MAX_IMAGE_PIXELS, ~179 megapixels) fires before ours can;
        # it stays, for it also covers GIF frames larger than the declared canvas.
        raise MediaRejected(f"The image has over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} "
                            "megapixels, far too many.") from exc
    except _DECODE_ERRORS as exc:  # UnidentifiedImageError among them
        if _begins_as(declared, src):
            raise MediaRejected(_DAMAGED) from exc
        raise MediaRejected(f"The file is not a readable {declared.split('/')[1].upper()} "
                            "image.") from exc
    with img:
        if img.format not in IMAGE_FORMATS[declared]:
            raise MediaRejected(f"The file is a {img.format} image, not {declared}.")
        width, height = img.size
        if max(width, height) > limits.max_image_side:
            raise MediaRejected(f"The image is {width}x{height} pixels; the limit is "
                                f"{limits.max_image_side} pixels a side.")
        if width * height > limits.max_image_pixels:
            raise MediaRejected(f"The image is {width * height / 1e6:.0f} megapixels; the "
                                f"limit is {limits.max_image_pixels / 1e6:.0f}.")
        try:
            if img.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
                width, height = height, width
            img.draft("RGB", _covering(img.size, limits.large_px))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return _to_srgb(img), width, height
        except _DECODE_ERRORS as exc:
            raise MediaRejected(_DAMAGED) from exc


def _begins_as(declared: str, src: Path) -> bool:
    offset, signature = _SIGNATURES[declared]
    with src.open("rb") as file:
        return file.read(offset + len(signature))[offset:] == signature


def _covering(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """`size` scaled so its longest side is `longest` (what JPEG draft mode must cover)."""
    scale = min(1.0, longest / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _to_srgb(img: Image.Image) -> Image.Image:
    """RGB or RGBA pixels in sRGB: once the ICC profile is dropped, sRGB is what every
    viewer assumes, so a Display P3 or CMYK photo is converted rather than mislabelled."""
    mode = "RGBA" if img.has_transparency_data else "RGB"
    icc = img.info.get("icc_profile")
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(img, profile, _SRGB, outputMode=mode)
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken or unusable profile: keep the numbers as they are
    return img.convert(mode)


def _save_webp(img: Image.Image, path: Path) -> None:
    """WebP with no EXIF, XMP or ICC: those carry GPS positions, camera serials, names."""
    img.info.clear()
    img.save(path, "WEBP", **_WEBP)


def _blurhash(img: Image.Image) -> str:
    """4x3-component blurhash from a 32 px copy (the encoder is pure Python)."""
    tiny = img.convert("RGB")
    tiny.thumbnail((32, 32))
    data, row = tiny.tobytes(), tiny.width * 3
    rows = [[data[x:x + 3] for x in range(y, y + row, 3)]
            for y in range(0, len(data), row)]
    return blurhash.encode(rows, 4, 3)


def _process_video(src: Path, declared: str, out_dir: Path,
                  limits: ProcessingLimits) -> Processed:
    """An HLS ladder under hls/ and a poster frame, without the source's metadata."""
    probe = _probe(src, declared, limits)
    if not probe.width:
        raise MediaRejected("The file has no video stream.")
    if max(probe.width, probe.height) > limits.max_video_side:
        raise MediaRejected(f"The video is {probe.width}x{probe.height} pixels; the limit is "
                            f"{limits.max_video_side} pixels a side.")
    _check_duration(probe.duration_s, "video", limits)
    hls = out_dir / "hls"
    hls.mkdir(exist_ok=True)
    _run(hls_command(src, probe, limits), limits, "The video could not be converted.", hls)
    duration = probe.duration_s or playlist_seconds((hls / "v0" / "index.m3u8").read_text())
    _check_duration(duration, "video", limits)
    _run(poster_command(src, min(1.0, duration / 2), limits), limits,
         "The video could not be converted.", out_dir)
    if not (out_dir / "poster.jpg").is_file():
        raise MediaRejected("No frame of the video could be decoded.")
    return Processed(
        kind="video", width=probe.width, height=probe.height, duration_s=duration, blurhash=None,
        variants={"hls": "hls/master.m3u8", "poster": "poster.jpg"},
        files=(OutputFile("poster.jpg", "image/jpeg"), *_hls_files(out_dir)))


def _process_audio(src: Path, declared: str, out_dir: Path,
                  limits: ProcessingLimits) -> Processed:
    """audio.m4a, AAC and loudness-normalised."""
    probe = _probe(src, declared, limits)
    if not probe.has_audio:
        raise MediaRejected("The file has no audio stream.")
    _check_duration(probe.duration_s, "audio", limits)
    _run(audio_command(src, probe, limits), limits, "The audio could not be converted.",
         out_dir)
    duration = probe.duration_s or _probe(out_dir / "audio.m4a", "audio/mp4", limits).duration_s
    _check_duration(duration, "audio", limits)
    return Processed(kind="audio", width=None, height=None, duration_s=duration, blurhash=None,
                     variants={"audio": "audio.m4a"},
                     files=(OutputFile("audio.m4a", "audio/mp4"),))


def _probe(src: Path, declared: str, limits: ProcessingLimits) -> Probe:
    """ffprobe's reading of `src`, refused unless the container is the declared one."""
    unreadable = f"The file is not a readable {declared} file."
    probe = read_probe(_run(probe_command(src), limits, unreadable))
    if probe is None:
        raise MediaRejected(unreadable)
    if probe.format_name != AV_FORMATS[declared]:
        raise MediaRejected(f"The file is {probe.format_long_name}, not {declared}.")
    return probe


def _check_duration(seconds: float | None, kind: str, limits: ProcessingLimits) -> None:
    if seconds is not None and seconds > limits.max_duration_s:
        raise MediaRejected(f"The {kind} lasts {seconds:.0f} s; the limit is "
                            f"{limits.max_duration_s:.0f} s.")


def _hls_files(out_dir: Path) -> list[OutputFile]:
    """Segments, then media playlists, then the master playlist: uploaded in this order, no
    playlist ever names a file that is not there yet."""
    paths = sorted((p for p in (out_dir / "hls").rglob("*") if p.is_file()),
                   key=lambda p: (p.suffix == ".m3u8", p.name == "master.m3u8", p.as_posix()))
    return [OutputFile(p.relative_to(out_dir).as_posix(),
                       _HLS_TYPES.get(p.suffix, "application/octet-stream")) for p in paths]


def _run(argv: list[str], limits: ProcessingLimits, failure: str, cwd: Path | None = None) -> str:
    """Run ffmpeg or ffprobe; its failure or timeout on this input rejects the input (a
    missing binary is not the input's fault, and raises)."""
    try:
        done = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=limits.timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MediaRejected("The file took too long to process.") from exc
    if done.returncode != 0:
        log.info("%s exited with %s: %s", argv[0], done.returncode,
                 done.stderr[-2000:].decode(errors="replace"))
        raise MediaRejected(failure)
    return done.stdout.decode(errors="replace")
