"""`python -m bench.call`: call setup time, signaling capacity, and live-stream delay.

Targets on 2 cores, everything on one host through the gateway:
- setup: from `POST /api/calls` to ICE connected for two aiortc peers (each joining over
  /ws/calls, the callee offering, the caller answering), over 50 calls: p50 <= 150 ms,
  p95 <= 300 ms;
- signaling: concurrent 1:1 calls on the two call replicas, each participant sending a
  candidate frame to the other every second; the relay latency (p50/p99) and frames/s at each
  step, up to where p99 passes 100 ms or frames go missing;
- live: WHIP publish to HLS playlist, the delay from a frame sent to the playlist that lists
  the segment holding it (first and last frame of each segment: one segment length apart).
"""

import argparse
import asyncio
import contextlib
import json
import statistics
import time

import httpx
from aiortc import AudioStreamTrack, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.exceptions import InvalidStateError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from call_svc.client import CallPeer, rtc_configuration
from call_svc.patterns import TestPatternTrack

from .stack import embedded_stack, sign_up

SETUP_TARGET = "target p50 <= 150 ms, p95 <= 300 ms"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def wait_known(http: httpx.AsyncClient, caller: str, callee: str) -> None:
    """The call service learns of new users from profile.created: 422 until then."""
    for _ in range(240):
        response = await http.post("/api/calls", headers={"Authorization": f"Bearer {caller}"},
                                   json={"callee_ids": [callee], "media": "audio"})
        if response.status_code == 201:
            await http.post(f"/api/calls/{response.json()['call_id']}/leave",
                            headers={"Authorization": f"Bearer {caller}"})
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("the call service never learned of the bench users")


def ws_url(base_url: str, call_id: str) -> str:
    return base_url.replace("http", "ws", 1) + f"/ws/calls/{call_id}"


# --- setup time ---------------------------------------------------------------------------

async def setup_times(base_url: str, users: list[tuple[str, str]], calls: int) -> list[float]:
    (alice, alice_id), (bob, bob_id) = users[0], users[1]
    times = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        await wait_known(http, alice, bob_id)
        for _ in range(calls):
            begun = time.perf_counter()
            started = (await http.post("/api/calls", json={"callee_ids": [bob_id]},
                                       headers={"Authorization": f"Bearer {alice}"})).json()
            url, servers = ws_url(base_url, started["call_id"]), started["ice_servers"]
            a = CallPeer(url, alice, ice_servers=servers,
                         tracks=[AudioStreamTrack(), VideoStreamTrack()])
            b = CallPeer(url, bob, ice_servers=servers,
                         tracks=[AudioStreamTrack(), VideoStreamTrack()])
            try:
                await a.join()
                await b.join()  # bob offers, alice answers
                await asyncio.wait_for(asyncio.gather(
                    a.link(bob_id).wait(), b.link(alice_id).wait()), 20)
                times.append((time.perf_counter() - begun) * 1000)
            finally:
                await b.leave()
                await a.leave()
    return times


# --- signaling capacity -------------------------------------------------------------------

CANDIDATE = "candidate:{stamp} 1 udp 2122260223 192.0.2.1 {port} typ host"


async def signaling_step(base_url: str, users: list[tuple[str, str]], calls: int,
                         seconds: float) -> dict[str, float]:
    """`calls` 1:1 calls, both sides joined, each side sending a candidate to the other every
    second for `seconds`; every candidate carries its send time."""
    latencies: list[float] = []
    samples: list[str] = []
    sent = received = errors = 0
    in_window: set[int] = set()  # stamps of the frames sent while measuring
    arrived: set[int] = set()
    measuring = False
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        limit = asyncio.Semaphore(32)

        async def start(i: int) -> tuple[str, tuple[str, str], tuple[str, str]]:
            a, b = users[(2 * i) % len(users)], users[(2 * i + 1) % len(users)]
            async with limit:
                response = await http.post("/api/calls", json={"callee_ids": [b[1]]},
                                           headers={"Authorization": f"Bearer {a[0]}"})
            response.raise_for_status()
            return response.json()["call_id"], a, b

        started = await asyncio.gather(*(start(i) for i in range(calls)))

    ready: list[asyncio.Event] = []

    async def side(call_id: str, me: tuple[str, str], other: str, go: asyncio.Event,
                   stop: asyncio.Event) -> None:
        nonlocal sent, received, errors
        both_in = asyncio.Event()  # this side has joined and knows the other is in too
        ready.append(both_in)
        async with connect(ws_url(base_url, call_id), max_size=1 << 20) as ws:
            await ws.send(json.dumps({"type": "auth", "token": me[0]}))
            await ws.send(json.dumps({"type": "join"}))

            async def read() -> None:
                nonlocal received, errors
                with contextlib.suppress(ConnectionClosed):
                    async for raw in ws:
                        if '"candidate"' in raw[:30]:
                            stamp = int(json.loads(raw)["candidate"]["candidate"]
                                        .split(" ", 1)[0].split(":")[1])
                            latencies.append((time.time_ns() - stamp) / 1e6)
                            arrived.add(stamp)
                            received += 1
                        elif '"joined"' in raw[:20] and other in raw or (
                                '"participant_joined"' in raw[:40]):
                            both_in.set()
                        elif '"error"' in raw[:20]:
                            errors += 1
                            if len(samples) < 3:
                                samples.append(raw[:200])

            reader = asyncio.create_task(read())
            await go.wait()
            await asyncio.sleep(hash(me[1] + call_id) % 1000 / 1000)  # spread over the second
            while not stop.is_set():
                stamp = time.time_ns()
                if measuring:
                    in_window.add(stamp)
                candidate = CANDIDATE.format(stamp=stamp, port=1024 + sent % 60000)
                await ws.send(json.dumps({"type": "candidate", "to": other, "candidate": {
                    "candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}}))
                sent += 1
                await asyncio.sleep(1.0)
            await asyncio.sleep(2.0)  # the last frames in flight
            reader.cancel()

    go, stop = asyncio.Event(), asyncio.Event()
    began = time.monotonic()
    sides = [asyncio.create_task(side(call_id, me, other[1], go, stop))
             for call_id, a, b in started for me, other in ((a, b), (b, a))]
    while len(ready) < len(sides) or not all(e.is_set() for e in ready):
        if time.monotonic() - began > 300:
            raise TimeoutError(f"{sum(e.is_set() for e in ready)} of {len(sides)} sides ready")
        await asyncio.sleep(0.2)
    joined_s = time.monotonic() - began
    go.set()
    await asyncio.sleep(2.0)  # everyone sending at their pace
    latencies.clear()
    measuring = True
    sent_at_start, received_at_start, began = sent, received, time.monotonic()
    await asyncio.sleep(seconds)
    measuring = False
    elapsed, window_sent = time.monotonic() - began, sent - sent_at_start
    window_received = received - received_at_start
    stop.set()
    await asyncio.gather(*sides, return_exceptions=True)
    return {"calls": calls, "sent_per_s": window_sent / elapsed,
            "relayed_per_s": window_received / elapsed, "joined_s": joined_s,
            "p50_ms": statistics.median(latencies) if latencies else float("nan"),
            "p99_ms": pct(latencies, 99), "lost": len(in_window - arrived), "errors": errors,
            "samples": samples}


# --- live delay ---------------------------------------------------------------------------

async def live_delay(base_url: str, owner: str, seconds: float) -> tuple[list[float], float]:
    """Publish a numbered pattern over WHIP for `seconds`; for each segment the playlist
    lists, the delay from its first frame's send time to the listing."""
    headers = {"Authorization": f"Bearer {owner}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        stream = (await http.post("/api/live", json={"title": "bench"}, headers=headers)).json()
        track = TestPatternTrack(fps=30)
        pc = RTCPeerConnection(rtc_configuration([]))
        pc.addTrack(track)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await http.post(stream["whip_url"], content=pc.localDescription.sdp,
                                 headers=headers | {"Content-Type": "application/sdp"})
        answer.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
        playlist_url = stream["playback"]["hls_url"]
        listed: dict[str, float] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            response = await http.get(playlist_url)
            if response.status_code == 200:
                now = time.monotonic()
                for line in response.text.splitlines():
                    if line and not line.startswith("#") and line not in listed:
                        listed[line] = now
            await asyncio.sleep(0.02)
        await http.delete(answer.headers["location"], headers=headers)
        await pc.close()
        segment_s = float(next(
            (line.split(":")[1] for line in response.text.splitlines()
             if line.startswith("#EXT-X-TARGETDURATION")), "2"))
    sent = track.sent  # frame number -> when it was sent (monotonic)
    first = min(sent.values()) if sent else time.monotonic()
    ordered = sorted(listed.items(), key=lambda item: item[1])
    # The packager starts a segment every `hls_segment_s` of stream time: the n-th listed
    # segment's first frame was sent about n segment lengths after the first frame.
    delays = [(at - (first + n * segment_s)) for n, (_, at) in enumerate(ordered)]
    return delays, segment_s


# --- main ---------------------------------------------------------------------------------

def quiet_closed_transports(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """aiortc's connect task fails when a call is hung up while it still runs: expected
    here, where calls end the moment they connect."""
    if isinstance(context.get("exception"), InvalidStateError):
        return
    loop.default_exception_handler(context)


async def run(base_url: str, args: argparse.Namespace) -> None:
    asyncio.get_running_loop().set_exception_handler(quiet_closed_transports)
    users = await sign_up(base_url, max(2, args.users), prefix="callbench")
    if "setup" in args.only:
        print(f"call setup over {args.calls} calls (POST /api/calls to ICE connected, aiortc "
              f"both sides)")
        times = await setup_times(base_url, users, args.calls)
        print(f"  p50 {statistics.median(times):.0f} ms  p95 {pct(times, 95):.0f} ms  "
              f"max {max(times):.0f} ms  ({SETUP_TARGET})")
    if "signaling" in args.only:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            for i in range(0, len(users) - 1, 2):
                await wait_known(http, users[i][0], users[i + 1][1])
        print("signaling: concurrent 1:1 calls, a candidate per participant per second")
        for calls in args.steps:
            step = await signaling_step(base_url, users, calls, args.seconds)
            print(f"  {calls:5d} calls ({2 * calls} sockets): {step['relayed_per_s']:7.0f} "
                  f"frames/s relayed of {step['sent_per_s']:7.0f}/s sent  p50 "
                  f"{step['p50_ms']:6.1f} ms  p99 {step['p99_ms']:6.1f} ms  lost {step['lost']}"
                  f"  errors {step['errors']}  (all joined in {step['joined_s']:.1f} s)")
            for sample in step["samples"]:
                print(f"    error: {sample}")
            if step["p99_ms"] > 100 or step["lost"]:
                print("  (p99 over 100 ms or frames lost: the step before is what is sustained)")
                break
    if "live" in args.only:
        delays, segment_s = await live_delay(base_url, users[0][0], args.live_seconds)
        if not delays:
            print("live: no segment was listed")
            return
        print(f"live: WHIP to HLS playlist, {len(delays)} segments of {segment_s:.0f} s: "
              f"first frame of a segment listed after p50 {statistics.median(delays):.2f} s, "
              f"max {max(delays):.2f} s; its last frame ~{segment_s:.0f} s less")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running stack's gateway (default: start one)")
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 250, 500, 1000, 2000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--live-seconds", type=float, default=12.0)
    parser.add_argument("--only", nargs="+", default=["setup", "signaling", "live"],
                        choices=["setup", "signaling", "live"])
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url.rstrip("/"), args))
        return
    with embedded_stack(args.port, None) as (base_url, _):
        asyncio.run(run(base_url, args))


if __name__ == "__main__":
    main()
