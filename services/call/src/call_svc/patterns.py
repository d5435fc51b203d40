"""Synthetic media: a moving test-pattern video track and a tone, for tests, benchmarks and
checking a deployment by hand (a bot that joins a call).

Both are paced in real time like a camera and a microphone, and stamp their frames the way
aiortc's senders expect (90 kHz video clock, 48 kHz audio clock). Each video frame carries its
number in a row of cells across the top, which survives encoding: `frame_number` reads it back
from a received or decoded frame, and the track remembers when it sent each one (`sent`), so a
receiver measures a frame's delay end to end. Frames are built from bytes (no numpy).

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
CELL, BITS = 16, 16  # the frame number: 16 cells of 16x16 px across the top
DARK, LIGHT = 0x10, 0xEB


def frame_number(frame: VideoFrame) -> int:
    """The number `TestPatternTrack` drew on the frame (read from the middle of each cell)."""
    luma = frame.planes[0]
    data, middle = bytes(luma), CELL // 2 * luma.line_size + CELL // 2
    return sum(1 << bit for bit in range(BITS) if data[middle + bit * CELL] > 0x80)


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
    """A video track: its frame number across the top, a bright bar sweeping across a dark
    field whose tint is `hue` (0-255), so every frame differs from the one before and two
    participants tell apart."""

    __test__ = False  # not a pytest test class despite the name
    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15, hue: int = 64):
        super().__init__()
        if width < CELL * BITS:
            raise ValueError(f"at least {CELL * BITS} px wide: the frame number fits across")
        self.width, self.height, self.fps, self.hue = width, height, fps, hue
        self.sent: dict[int, float] = {}  # frame number -> when it was handed out (monotonic)

    async def recv(self) -> VideoFrame:
        n = self.frames_sent
        await self._due(n / self.fps)
        frame = VideoFrame(self.width, self.height, "yuv420p")
        luma, blue, red = frame.planes
        code = bytearray([DARK]) * luma.line_size
        for bit in range(BITS):
            if n >> bit & 1:
                code[bit * CELL:(bit + 1) * CELL] = bytes([LIGHT]) * CELL
        bar = (n * 8) % self.width
        row = bytearray([40]) * luma.line_size
        row[bar:bar + 24] = bytes([LIGHT]) * len(row[bar:bar + 24])
        luma.update(bytes(code) * CELL + bytes(row) * (self.height - CELL))
        blue.update(bytes([self.hue]) * blue.buffer_size)
        red.update(bytes([255 - self.hue]) * red.buffer_size)
        frame.pts = round(n / self.fps / VIDEO_CLOCK)
        frame.time_base = VIDEO_CLOCK
        self.sent[n] = time.monotonic()
        self.frames_sent += 1
        return frame


class ToneTrack(_Paced):
    """An audio track: a steady sine tone of `hz` (whole hertz) in 20 ms mono frames."""

    kind = "audio"
    SAMPLES = 960  # 20 ms

    def __init__(self, hz: int = 400, level: float = 0.3) -> None:
        super().__init__()
        # One second of a whole number of periods: frames cut from it in turn join up.
        samples = array("h", (round(level * 32767 * math.sin(2 * math.pi * hz * i / AUDIO_RATE))
                              for i in range(AUDIO_RATE)))
        self._pcm = samples.tobytes()

    async def recv(self) -> AudioFrame:
        n = self.frames_sent
        await self._due(n * self.SAMPLES / AUDIO_RATE)
        frame = AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        start = n * self.SAMPLES % AUDIO_RATE * 2  # bytes
        frame.planes[0].update(self._pcm[start:start + self.SAMPLES * 2])
        frame.sample_rate = AUDIO_RATE
        frame.pts = n * self.SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self.frames_sent += 1
        return frame
