"""`python -m bench.media`: the post service's media processing on camera-sized input.

Targets on 2 cores: >= 4 images/s for 12-megapixel camera JPEGs with two worker processes,
and the full HLS ladder (240p to 1080p) of a 1080p clip at >= 1x real time.

The photo is 4000x3000 with blotches, gradients and sensor-like grain (about 5 MB at JPEG
quality 90, so encoding it is not trivially cheap) and camera EXIF with Orientation 6, as a
phone writes it. The clip is ffmpeg's testsrc2 with a tone, H.264 and AAC.
"""

import argparse
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import ExifTags, Image, ImageChops

from post_svc.mediaproc import ProcessingLimits, process

PHOTO_SIZE = (4000, 3000)


def camera_photo(path: Path) -> None:
    """A 12-megapixel JPEG with the structure and grain of a photo, and a camera's EXIF."""
    width, height = PHOTO_SIZE
    blotches = Image.merge("RGB", [
        Image.effect_noise((width // 16, height // 16), 60).resize(PHOTO_SIZE, Image.BICUBIC)
        for _ in range(3)])
    gradients = Image.merge("RGB", [
        Image.linear_gradient("L").resize(PHOTO_SIZE),
        Image.radial_gradient("L").resize(PHOTO_SIZE),
        Image.linear_gradient("L").rotate(90).resize(PHOTO_SIZE)])
    grain = Image.merge("RGB", [Image.effect_noise(PHOTO_SIZE, 12)] * 3)
    photo = ImageChops.add(ImageChops.blend(blotches, gradients, 0.5), grain, offset=-128)
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "Canon", "EOS R5"
    exif[ExifTags.Base.Orientation] = 6
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (35.0, 39.0, 29.0)})
    photo.save(path, "JPEG", quality=90, exif=exif)


def sample_clip(path: Path, seconds: int) -> None:
    """A 1080p30 H.264 + AAC clip of ffmpeg's moving test pattern and a tone."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=s=1920x1080:r=30:d={seconds}",
                    "-f", "lavfi", "-i", f"sine=f=440:d={seconds}",
                    "-c:v", "libx264", "-preset", "fast", "-crf", "20", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", str(path)], check=True)


def _timed_image(src: Path, out_dir: Path) -> float:
    """Seconds to process one image (runs in a worker process)."""
    began = time.perf_counter()
    process(src, "image/jpeg", out_dir)
    elapsed = time.perf_counter() - began
    shutil.rmtree(out_dir)
    return elapsed


def bench_images(workdir: Path, count: int, workers: int) -> None:
    src = workdir / "photo.jpg"
    camera_photo(src)
    print(f"images: {count} x {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG "
          f"({src.stat().st_size / 1e6:.1f} MB, EXIF, Orientation 6), {workers} worker processes")
    with ProcessPoolExecutor(workers) as pool:
        # One image per worker first, so imports and first-call costs are not measured.
        list(pool.map(_timed_image, [src] * workers,
                      [workdir / f"warm{i}" for i in range(workers)]))
        began = time.perf_counter()
        latencies = sorted(pool.map(_timed_image, [src] * count,
                                    [workdir / f"image{i}" for i in range(count)]))
        elapsed = time.perf_counter() - began
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(count - 1, int(count * 0.99))] * 1000
    print(f"{'process image':<34} {count / elapsed:>6.1f} images/s   p50 {p50:>7.1f} ms   "
          f"p99 {p99:>7.1f} ms   (target >= 4 images/s)")


def bench_video(workdir: Path, seconds: int, preset: str) -> None:
    src = workdir / "clip.mp4"
    sample_clip(src, seconds)
    limits = ProcessingLimits(x264_preset=preset)
    ladder = "/".join(str(height) for height in limits.renditions)
    print(f"video: {seconds} s 1920x1080 30 fps H.264 + AAC ({src.stat().st_size / 1e6:.0f} MB), "
          f"renditions {ladder}, x264 preset {preset}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = process(src, "video/mp4", workdir / "video", limits)
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"{'process video':<34} {elapsed:>6.1f} s wall   {done.duration_s / elapsed:>5.2f}x "
          f"real time   ffmpeg cpu {cpu:.1f} s ({cpu / elapsed:.2f} cores busy)   "
          f"(target >= 1x real time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="0 skips the images")
    parser.add_argument("--workers", type=int, default=2, help="image worker processes")
    parser.add_argument("--video-seconds", type=int, default=30, help="0 skips the video")
    parser.add_argument("--preset", default=ProcessingLimits().x264_preset,
                        help="x264 preset for the video")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asyncsns-media-") as workdir:
        if args.images:
            bench_images(Path(workdir), args.images, args.workers)
        if args.video_seconds:
            bench_video(Path(workdir), args.video_seconds, args.preset)


if __name__ == "__main__":
    main()
