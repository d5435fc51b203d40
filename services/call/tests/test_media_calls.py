"""Real media: aiortc participants (call_svc.client) call each other through the API and the
signaling of two replicas, and audio and video flow between them."""

import asyncio

from call_svc.client import CallPeer

from .conftest import peer, start_call


async def _flowing(peer: CallPeer, other: str, frames: int = 10) -> None:
    await asyncio.wait_for(peer.link(other).wait(), 20)
    for _ in range(200):
        counts = peer.received.get(other, {})
        if counts.get("video", 0) >= frames and counts.get("audio", 0) >= frames:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"media from {other} did not flow: {dict(peer.received)}")


async def test_two_aiortc_peers_on_two_replicas_connect_with_audio_and_video(
        replicas, user, api):
    one, two = await replicas(2)
    alice, bob = await user(one, "alice"), await user(two, "bob")
    started = await start_call(api, one, alice, [bob])
    a, b = peer(one, started, alice), peer(two, started, bob)
    try:
        await a.join()
        await b.join()  # bob offers to alice, through replica two, Redis and replica one
        await _flowing(a, bob.id)
        await _flowing(b, alice.id)
        assert a.pcs[bob.id].iceConnectionState in ("connected", "completed")
    finally:
        await b.leave()
        await asyncio.wait_for(a.ended.wait(), 10)
        await a.close()
