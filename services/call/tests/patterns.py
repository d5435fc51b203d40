"""Synthetic media for call tests: a moving test-pattern video track and a tone.

Both are paced in real time like a camera and a microphone, and stamp their frames the way
aiortc's senders expect (90 kHz video clock, 48 kHz audio clock). Frames are built from bytes,
so no numpy is needed.

    from .patterns import TestPatternTrack, ToneTrack
    pc.addTrack(TestPatternTrack()); pc.addTrack(ToneTrack())
"""

import asyncio
import fractions
import math
import time
from array import array

from aiortc import MediaStreamTrack
from av import AudioFrame, VideoFrame

VIDEO_CLOCK = fractions.Fraction(1, 90_000)
AUDIO_RATE = 48_000


class _Paced(MediaStreamTrack):
    """Sleeps until each frame is due, counting from the first `recv`."""

    def __init__(self) -> None:
        super().__init__()
        self._started: float | None = None
        self.frames_sent = 0

    async def _due(self, seconds: float) -> None:
        if self._started is None:
            self._started = time.monotonic()
        delay = self._started + seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class TestPatternTrack(_Paced):
    """A video track: a bright bar sweeping across a dark field whose tint is `hue` (0-255),
    so every frame differs from the one before and two participants tell apart."""

    __test__ = False  # not a pytest test class despite the name
    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15, hue: int = 64):
        super().__init__()
        self.width, self.height, self.fps, self.hue = width, height, fps, hue

    async def recv(self) -> VideoFrame:
        n = self.frames_sent
        await self._due(n / self.fps)
        frame = VideoFrame(self.width, self.height, "yuv420p")
        luma, blue, red = frame.planes
        bar = (n * 8) % self.width
        row = bytearray([40]) * luma.line_size
        row[bar:bar + 24] = b"\xeb" * len(row[bar:bar + 24])
        luma.update(bytes(row) * self.height)
        blue.update(bytes([self.hue]) * blue.buffer_size)
        red.update(bytes([255 - self.hue]) * red.buffer_size)
        frame.pts = round(n / self.fps / VIDEO_CLOCK)
        frame.time_base = VIDEO_CLOCK
        self.frames_sent += 1
        return frame


class ToneTrack(_Paced):
    """An audio track: a steady sine tone in 20 ms mono frames."""

    kind = "audio"
    SAMPLES = 960  # 20 ms

    def __init__(self, hz: int = 400, level: float = 0.3) -> None:
        super().__init__()
        # 400 Hz fits 48 kHz exactly (120 samples a period), so every frame is the same.
        samples = array("h", (round(level * 32767 * math.sin(2 * math.pi * hz * i / AUDIO_RATE))
                              for i in range(self.SAMPLES)))
        self._pcm = samples.tobytes()

    async def recv(self) -> AudioFrame:
        n = self.frames_sent
        await self._due(n * self.SAMPLES / AUDIO_RATE)
        frame = AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        frame.planes[0].update(self._pcm)
        frame.sample_rate = AUDIO_RATE
        frame.pts = n * self.SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.frames_sent += 1
        return frame
