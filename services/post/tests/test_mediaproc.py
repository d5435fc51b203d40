"""The media worker's processing core against real Pillow and a real ffmpeg.

Every fixture is made here, in a temporary directory: images with Pillow, clips with
ffmpeg's test sources, and hostile files byte by byte.
"""

import json
import struct
import subprocess
import time
import zlib
from pathlib import Path

import blurhash
import pytest
from PIL import ExifTags, Image, ImageCms

from post_svc.mediaproc import MediaRejected, ProcessingLimits, kind_of, process
from post_svc.mediaproc_av import Probe, hls_command, read_probe

RED, BLUE = (220, 20, 20), (20, 20, 220)
SECRETS = (b"Canon", b"EOS R5", b"xmp-secret", b"Exif", b"EXIF", b"ICCP", b"XMP ", b"Lavc")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def ffprobe(path: Path) -> dict:
    done = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                           "-show_programs", "-show_streams", str(path)],
                          check=True, capture_output=True)
    return json.loads(done.stdout)


def camera_jpeg(path: Path, size: tuple[int, int] = (400, 200)) -> None:
    """A red landscape photo with a blue top-left corner, stored sideways (Orientation 6),
    carrying the camera, a GPS position, XMP and an ICC profile."""
    img = Image.new("RGB", size, RED)
    img.paste(BLUE, (0, 0, size[0] // 4, size[1] // 4))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "EOS R5"
    exif[ExifTags.Base.Orientation] = 6
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (35.0, 39.0, 29.0),
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (139.0, 44.0, 28.0)})
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img.save(path, "JPEG", quality=92, exif=exif, icc_profile=srgb,
             xmp=b"<x:xmpmeta>xmp-secret</x:xmpmeta>")


def noisy_jpeg(path: Path, size: tuple[int, int]) -> None:
    Image.merge("RGB", [Image.effect_noise(size, 50)] * 3).save(path, "JPEG", quality=90)


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG whose pixels would take width*height bytes once decoded, made
    without ever holding them: zeros compress a thousandfold."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows, compressor = bytes(1 + (width + 7) // 8) * 1000, zlib.compressobj(1)
    idat = b"".join([compressor.compress(rows) for _ in range(height // 1000)]
                    + [compressor.compress(rows[: len(rows) // 1000 * (height % 1000)]),
                       compressor.flush()])
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def assert_no_metadata(path: Path) -> None:
    with Image.open(path) as img:
        assert len(img.getexif()) == 0
        assert not {"exif", "xmp", "icc_profile"} & set(img.info)
    data = path.read_bytes()
    assert not [secret for secret in SECRETS if secret in data]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 s of 640x360 video with a tone, titled and commented."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=640x360:r=25:d=6", "-f", "lavfi",
           "-i", "sine=f=440:d=6", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-metadata", "title=Holiday at home", "-metadata", "comment=35.65N",
           "-shortest", str(path))
    return path


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tone") / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=f=440:d=3", "-metadata", "title=Voice memo", str(path))
    return path


def test_declared_type_decides_the_kind() -> None:
    assert kind_of("image/jpeg") == "image"
    assert kind_of("IMAGE/HEIC") == "image"
    assert kind_of("video/quicktime") == "video"
    assert kind_of("audio/mp4") == "audio"
    assert kind_of("video/mp4") == "video"
    assert kind_of("audio/webm; codecs=opus") == "audio"
    assert kind_of("application/pdf") is None
    assert kind_of("image/svg+xml") is None


def _graph(width: int, height: int, has_audio: bool = True) -> tuple[str, str]:
    """The filter graph and stream map of the HLS command for a source of this size."""
    probe = Probe("mov,mp4,m4a,3gp,3g2,mj2", "QuickTime / MOV", 10.0, width, height,
                  has_audio, 2)
    argv = hls_command(Path("/in.mov"), probe, ProcessingLimits())
    return argv[argv.index("-filter_complex") + 1], argv[argv.index("-var_stream_map") + 1]


def test_ladder_stops_at_the_source_height() -> None:
    graph, streams = _graph(1280, 720)
    assert [part.split("scale=")[1][:6] for part in graph.split(";")] == [
        "-2:720", "-2:360", "-2:240"]
    assert streams == "v:0,a:0 v:1,a:1 v:2,a:2"


def test_portrait_ladder_is_sized_by_the_shorter_side() -> None:
    graph, _ = _graph(1080, 1920)
    assert "scale=1080:-2" in graph and "scale=240:-2" in graph


def test_small_video_keeps_its_own_even_height_and_silence() -> None:
    graph, streams = _graph(213, 121, has_audio=False)
    assert graph == "[0:v:0]scale=-2:120[v0]"
    assert streams == "v:0"


def test_probe_reads_displayed_size_and_ignores_cover_art() -> None:
    rotated = {"codec_type": "video", "width": 1920, "height": 1080,
               "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}
    cover = {"codec_type": "video", "width": 600, "height": 600,
             "disposition": {"attached_pic": 1}}
    sound = {"codec_type": "audio", "channels": 1}
    fmt = {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "12.3456"}

    probe = read_probe(json.dumps({"format": fmt, "streams": [rotated, sound]}))
    assert probe is not None and (probe.width, probe.height) == (1080, 1920)
    assert (probe.duration_s, probe.has_audio, probe.channels) == (12.35, True, 1)
    art = read_probe(json.dumps({"format": fmt, "streams": [cover, sound]}))
    assert art is not None and art.width == 0
    assert read_probe("not json") is None
    assert read_probe('{"format": {}, "streams": []}') is None


def test_photo_variants_are_upright_and_carry_no_metadata(tmp_path: Path) -> None:
    camera_jpeg(tmp_path / "photo.jpg")
    done = process(tmp_path / "photo.jpg", "image/jpeg", tmp_path / "out")

    assert (done.kind, done.width, done.height, done.duration_s) == ("image", 200, 400, None)
    assert done.variants == {"thumb": "thumb.webp", "large": "large.webp"}
    assert {(f.path, f.content_type) for f in done.files} == {
        ("thumb.webp", "image/webp"), ("large.webp", "image/webp")}
    for name, size in (("large.webp", (200, 400)), ("thumb.webp", (160, 320))):
        path = tmp_path / "out" / name
        assert_no_metadata(path)
        with Image.open(path) as img:
            assert img.format == "WEBP" and img.size == size
            rgb = img.convert("RGB")
            # The stored top-left corner is shown at the top right after a quarter turn.
            top_right = rgb.getpixel((img.width - 5, 5))
            assert top_right[2] > 150 and top_right[0] < 100
            top_left = rgb.getpixel((5, 5))
            assert top_left[0] > 150 and top_left[2] < 100
    assert blurhash.components(done.blurhash) == (4, 3)


def test_large_photos_are_scaled_to_the_configured_sides(tmp_path: Path) -> None:
    noisy_jpeg(tmp_path / "wide.jpg", (2000, 1000))
    done = process(tmp_path / "wide.jpg", "image/jpeg", tmp_path / "out",
                   ProcessingLimits(large_px=400, thumb_px=100))

    assert (done.width, done.height) == (2000, 1000)
    assert Image.open(tmp_path / "out" / "large.webp").size == (400, 200)
    assert Image.open(tmp_path / "out" / "thumb.webp").size == (100, 50)


def test_transparency_survives(tmp_path: Path) -> None:
    img = Image.new("RGBA", (64, 32), (0, 128, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 32, 32))
    img.save(tmp_path / "logo.png")
    process(tmp_path / "logo.png", "image/png", tmp_path / "out")

    with Image.open(tmp_path / "out" / "thumb.webp") as thumb:
        assert thumb.mode == "RGBA"
        assert thumb.getpixel((2, 16))[3] == 0 and thumb.getpixel((60, 16))[3] == 255


def test_animated_gif_keeps_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("P", (40, 40), i) for i in range(3)]
    frames[0].putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    done = process(tmp_path / "anim.gif", "image/gif", tmp_path / "out")

    assert (done.width, done.height) == (40, 40)
    assert Image.open(tmp_path / "out" / "large.webp").convert("RGB").getpixel((20, 20))[0] > 200


def test_heic_is_read_upright(tmp_path: Path) -> None:
    img = Image.new("RGB", (64, 32), RED)
    img.paste(BLUE, (0, 0, 16, 8))
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Orientation] = "Apple", 6
    img.save(tmp_path / "photo.heic", "HEIF", quality=90, exif=exif.tobytes())
    done = process(tmp_path / "photo.heic", "image/heic", tmp_path / "out")

    assert (done.width, done.height) == (32, 64)
    assert_no_metadata(tmp_path / "out" / "large.webp")
    with Image.open(tmp_path / "out" / "large.webp") as large:
        assert large.convert("RGB").getpixel((large.width - 3, 3))[2] > 150


def test_video_becomes_an_hls_ladder_up_to_its_own_height(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = process(clip, "video/mp4", out)

    assert (done.kind, done.width, done.height) == ("video", 640, 360)
    assert done.duration_s == pytest.approx(6.0, abs=0.2)
    assert done.variants == {"hls": "hls/master.m3u8", "poster": "poster.jpg"}
    master = (out / "hls" / "master.m3u8").read_text().splitlines()
    assert master[0] == "#EXTM3U"
    infos = [i for i, line in enumerate(master) if line.startswith("#EXT-X-STREAM-INF:")]
    assert [master[i].split("RESOLUTION=")[1].split(",")[0] for i in infos] == [
        "426x240", "640x360"]
    for i in infos:
        playlist = out / "hls" / master[i + 1]
        lines = playlist.read_text().splitlines()
        assert "#EXT-X-ENDLIST" in lines and "#EXT-X-PLAYLIST-TYPE:VOD" in lines
        segments = [line for line in lines if line.endswith(".ts")]
        assert len(segments) >= 2
        assert all((playlist.parent / segment).is_file() for segment in segments)
        probed = ffprobe(playlist.parent / segments[0])
        assert {s["codec_name"] for s in probed["streams"]} == {"h264", "aac"}
        # MPEG-TS would carry the title as its service name.
        assert "Holiday" not in json.dumps(probed) and "35.65N" not in json.dumps(probed)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(out / "hls" / "master.m3u8"),
                    "-f", "null", "-"], check=True)
    with Image.open(out / "poster.jpg") as poster:
        assert poster.size == (640, 360)
    assert_no_metadata(out / "poster.jpg")
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {f.path for f in done.files} == written
    assert {f.content_type for f in done.files} == {
        "image/jpeg", "application/vnd.apple.mpegurl", "video/mp2t"}


def test_video_without_a_recorded_duration_is_measured(tmp_path: Path) -> None:
    # Written to a pipe, as a browser's MediaRecorder does: no duration in the header.
    webm = tmp_path / "recorded.webm"
    with webm.open("wb") as sink:
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120:d=2",
                        "-c:v", "libvpx", "-deadline", "realtime", "-f", "webm", "-"],
                       stdout=sink, check=True)
    done = process(webm, "video/webm", tmp_path / "out")

    assert (done.width, done.height) == (160, 120)
    assert done.duration_s == pytest.approx(2.0, abs=0.2)
    assert "RESOLUTION=160x120" in (tmp_path / "out" / "hls" / "master.m3u8").read_text()


def test_audio_becomes_normalised_aac(tone: Path, tmp_path: Path) -> None:
    done = process(tone, "audio/wav", tmp_path / "out")

    assert (done.kind, done.width, done.height, done.blurhash) == ("audio", None, None, None)
    assert done.duration_s == pytest.approx(3.0, abs=0.1)
    assert done.variants == {"audio": "audio.m4a"}
    assert [(f.path, f.content_type) for f in done.files] == [("audio.m4a", "audio/mp4")]
    probed = ffprobe(tmp_path / "out" / "audio.m4a")
    (stream,) = probed["streams"]
    assert (stream["codec_name"], stream["channels"]) == ("aac", 1)
    assert float(probed["format"]["duration"]) == pytest.approx(3.0, abs=0.1)
    assert "Voice memo" not in json.dumps(probed)


def test_png_declared_as_jpeg_is_rejected(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg", "PNG")
    with pytest.raises(MediaRejected, match="PNG image, not image/jpeg"):
        process(tmp_path / "x.jpg", "image/jpeg", tmp_path / "out")


def test_jpeg_declared_as_png_is_rejected(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png", "JPEG")
    with pytest.raises(MediaRejected, match="JPEG image, not image/png"):
        process(tmp_path / "x.png", "image/png", tmp_path / "out")


def test_text_is_neither_an_image_nor_a_video(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("#EXTM3U\nfile:///etc/passwd\n")
    with pytest.raises(MediaRejected, match="not a readable WEBP image"):
        process(tmp_path / "notes.txt", "image/webp", tmp_path / "out")
    with pytest.raises(MediaRejected, match="not a readable video/mp4 file"):
        process(tmp_path / "notes.txt", "video/mp4", tmp_path / "out")


def test_jpeg_cut_inside_its_header_is_called_damaged(tmp_path: Path) -> None:
    camera_jpeg(tmp_path / "photo.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes()[:300])
    with pytest.raises(MediaRejected, match="damaged or truncated"):
        process(tmp_path / "cut.jpg", "image/jpeg", tmp_path / "out")


def test_truncated_jpeg_is_rejected_even_when_decoded_at_reduced_scale(tmp_path: Path) -> None:
    noisy_jpeg(tmp_path / "full.jpg", (2000, 1000))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaRejected, match="damaged or truncated"):
        process(tmp_path / "cut.jpg", "image/jpeg", tmp_path / "out",
                ProcessingLimits(large_px=400))


@pytest.mark.parametrize("content_type", ["image/jpeg", "video/mp4", "audio/mpeg"])
def test_empty_file_is_rejected(tmp_path: Path, content_type: str) -> None:
    (tmp_path / "empty").touch()
    with pytest.raises(MediaRejected, match="empty"):
        process(tmp_path / "empty", content_type, tmp_path / "out")


def test_unsupported_type_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.7")
    with pytest.raises(MediaRejected, match="not a supported media type"):
        process(tmp_path / "doc.pdf", "application/pdf", tmp_path / "out")


def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_bomb(30_000, 30_000))
    began = time.perf_counter()
    with pytest.raises(MediaRejected, match="over 179 megapixels"):
        process(tmp_path / "bomb.png", "image/png", tmp_path / "out")
    # Decoding 900 million pixels would take seconds and as many bytes.
    assert time.perf_counter() - began < 0.2


@pytest.mark.parametrize(("size", "reason"), [
    ((12_000, 100), "limit is 10000 pixels a side"),
    ((9_000, 6_000), "54 megapixels; the limit is 50"),
])
def test_images_over_the_limits_are_refused(tmp_path: Path, size: tuple[int, int],
                                            reason: str) -> None:
    (tmp_path / "big.png").write_bytes(png_bomb(*size))
    with pytest.raises(MediaRejected, match=reason):
        process(tmp_path / "big.png", "image/png", tmp_path / "out")


def test_wav_declared_as_mp4_video_is_rejected(tone: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaRejected, match="WAV.*not video/mp4"):
        process(tone, "video/mp4", tmp_path / "out")


def test_silent_video_declared_as_audio_is_rejected(clip: Path, tmp_path: Path) -> None:
    ffmpeg("-i", str(clip), "-map", "0:v", "-c", "copy", str(tmp_path / "silent.mp4"))
    with pytest.raises(MediaRejected, match="no audio stream"):
        process(tmp_path / "silent.mp4", "audio/mp4", tmp_path / "out")


def test_audio_declared_as_video_is_rejected(clip: Path, tmp_path: Path) -> None:
    ffmpeg("-i", str(clip), "-map", "0:a", "-c", "copy", str(tmp_path / "sound.m4a"))
    with pytest.raises(MediaRejected, match="no video stream"):
        process(tmp_path / "sound.m4a", "video/mp4", tmp_path / "out")


@pytest.mark.parametrize(("limits", "reason"), [
    (ProcessingLimits(max_duration_s=5), "lasts 6 s; the limit is 5 s"),
    (ProcessingLimits(max_video_side=600), "640x360 pixels; the limit is 600"),
])
def test_videos_over_the_limits_are_refused(clip: Path, tmp_path: Path,
                                            limits: ProcessingLimits, reason: str) -> None:
    with pytest.raises(MediaRejected, match=reason):
        process(clip, "video/mp4", tmp_path / "out", limits)
    assert not (tmp_path / "out" / "hls").exists()


def test_missing_ffmpeg_is_not_blamed_on_the_upload(tone: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        process(tone, "audio/wav", tmp_path / "out")
