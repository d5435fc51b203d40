"""Live streams through the API of two replicas: a WHIP publisher (aiortc) on one, a WHEP
viewer on the other (its offer is passed to the replica that holds the stream), HLS in the
media bucket, start and end events, and the bad input around them."""

import asyncio

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from call_svc.client import rtc_configuration
from chassis.testing import assert_problem, wait_until

SDP = {"Content-Type": "application/sdp"}


async def _offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def test_whip_publish_hls_and_whep_viewer_on_another_replica(
        replicas, user, api, tap, settings):
    one, two = await replicas(2)
    alice, bob = await user(one, "alice"), await user(two, "bob")
    async with api(one, alice) as as_alice, api(two, bob) as as_bob:
        created = await as_alice.post("/api/live", json={"title": "ライブ配信 test"})
        assert created.status_code == 201, created.text
        stream = created.json()
        sid = stream["stream_id"]
        assert stream["whip_url"].endswith(f"/api/live/{sid}/whip")
        assert stream["playback"]["hls_url"] == f"{settings.media_base_url}/live/{sid}/index.m3u8"
        assert stream["playback"]["whep_url"].endswith(f"/api/live/{sid}/whep")

        publisher = RTCPeerConnection(rtc_configuration([]))
        publisher.addTrack(VideoStreamTrack())
        offer = await _offer(publisher)
        # only its owner publishes it, with an SDP body
        assert_problem(await as_bob.post(f"/api/live/{sid}/whip", content=offer, headers=SDP),
                       404)
        assert_problem(await as_alice.post(f"/api/live/{sid}/whip", content=offer), 415)
        assert_problem(await as_alice.post(f"/api/live/{sid}/whip", content="v=0\r\nbad",
                                           headers=SDP), 400)
        async with httpx.AsyncClient(base_url=one.http) as anonymous:
            assert_problem(await anonymous.post(f"/api/live/{sid}/whip", content=offer,
                                                headers=SDP), 401)
        answered = await as_alice.post(f"/api/live/{sid}/whip", content=offer, headers=SDP)
        assert answered.status_code == 201, answered.text
        assert answered.headers["content-type"] == "application/sdp"
        session = answered.headers["location"]
        await publisher.setRemoteDescription(RTCSessionDescription(answered.text, "answer"))
        again = await as_alice.post(f"/api/live/{sid}/whip", content=offer, headers=SDP)
        assert_problem(again, 409)

        started = await tap[1].wait_for("live.started")
        assert started["data"]["stream_id"] == sid and started["data"]["owner_id"] == alice.id

        viewer = RTCPeerConnection(rtc_configuration([]))
        viewer.addTransceiver("video", direction="recvonly")
        frames: list[object] = []
        viewer.on("track", lambda track: asyncio.ensure_future(_count(track, frames)))
        watched = await as_bob.post(f"/api/live/{sid}/whep", content=await _offer(viewer),
                                    headers=SDP)
        assert watched.status_code == 201, watched.text
        await viewer.setRemoteDescription(RTCSessionDescription(watched.text, "answer"))

        async def seen() -> bool:
            return len(frames) >= 10

        await wait_until(seen, "the WHEP viewer on the other replica gets video")
        hls = stream["playback"]["hls_url"]  # the served URL maps to the bucket's keys

        def playlist() -> str:
            response = httpx.get(hls)
            return response.text if response.status_code == 200 else ""

        async def listed() -> bool:
            return ".ts" in await asyncio.to_thread(playlist)

        await wait_until(listed, "the HLS playlist lists a segment")
        segment = next(line for line in (await asyncio.to_thread(playlist)).splitlines()
                       if line.endswith(".ts"))
        served = await asyncio.to_thread(httpx.get, hls.rsplit("/", 1)[0] + "/" + segment)
        assert served.status_code == 200 and served.content[:1] == b"G"  # an MPEG-TS packet
        assert_problem(await as_bob.delete(f"/api/live/{sid}/whip/session"), 404)
        ended = await as_alice.delete(session)  # on the replica that does not hold it
        assert ended.status_code == 200 and ended.json()["state"] == "ended"
        assert (await tap[1].wait_for("live.ended"))["data"]["stream_id"] == sid
        assert "#EXT-X-ENDLIST" in await asyncio.to_thread(playlist)
        late = RTCPeerConnection(rtc_configuration([]))
        late.addTransceiver("video", direction="recvonly")
        assert_problem(await as_bob.post(f"/api/live/{sid}/whep", content=await _offer(late),
                                         headers=SDP), 409)
        for pc in (publisher, viewer, late):
            await pc.close()


async def _count(track, frames: list[object]) -> None:
    while True:
        try:
            frames.append(await track.recv())
        except Exception:
            return
