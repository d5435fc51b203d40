"""Recording a call through the API: the server joins the call on one replica, the stop
reaches it from the other, and the composed file lands in the uploads bucket for the media
worker, owned by whoever started it."""

import asyncio
import json
import subprocess

from call_svc.patterns import TestPatternTrack, ToneTrack
from chassis.testing import assert_problem, aws_client

from .conftest import peer, start_call


async def test_a_recorded_call_is_stored_with_its_duration(
        replicas, user, api, settings, moto_endpoint, tmp_path):
    one, two = await replicas(2)
    alice, bob, eve = (await user(one, "alice"), await user(two, "bob"),
                       await user(one, "eve"))
    async with api(one, alice) as as_alice, api(two, bob) as as_bob, api(one, eve) as as_eve:
        started = await start_call(api, one, alice, [bob])
        call_id = started["call_id"]
        assert_problem(await as_alice.post(f"/api/calls/{call_id}/recording"), 409)  # not in
        a = peer(one, started, alice, [TestPatternTrack(hue=40), ToneTrack(300)])
        b = peer(two, started, bob, [TestPatternTrack(hue=200), ToneTrack(500)])
        try:
            await a.join()
            await b.join()
            await asyncio.wait_for(a.link(bob.id).wait(), 20)
            assert_problem(await as_eve.post(f"/api/calls/{call_id}/recording"), 404)
            started = await as_alice.post(f"/api/calls/{call_id}/recording")
            assert started.status_code == 201, started.text
            recording = started.json()
            recorder = f"recorder:{recording['id']}"
            assert_problem(await as_bob.post(f"/api/calls/{call_id}/recording"), 409)
            await asyncio.wait_for(asyncio.gather(a.link(recorder).wait(),
                                                  b.link(recorder).wait()), 20)
            joined = next(f for f in b.frames if f["type"] == "participant_joined"
                          and f["user_id"] == recorder)
            assert joined["recorder"] is True
            await asyncio.sleep(5)
            stopped = await as_bob.delete(f"/api/calls/{call_id}/recording")  # other replica
            assert stopped.status_code == 200, stopped.text
            body = stopped.json()
            assert body["state"] == "stored" and body["media_id"] == recording["media_id"]
            assert 4.3 <= body["duration_s"] <= 6.0, body
            assert_problem(await as_bob.delete(f"/api/calls/{call_id}/recording"), 409)
        finally:
            await b.leave()
            await a.leave()

    s3 = aws_client("s3", moto_endpoint)
    stored = s3.get_object(Bucket=settings.uploads_bucket,
                           Key=f"recordings/{recording['media_id']}")
    assert stored["Metadata"]["owner"] == alice.id
    path = tmp_path / "recording.mp4"
    path.write_bytes(stored["Body"].read())
    probe = json.loads((await asyncio.to_thread(
        subprocess.run,
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True, check=True)).stdout)
    assert {s["codec_type"] for s in probe["streams"]} == {"audio", "video"}
    assert 4.3 <= float(probe["format"]["duration"]) <= 6.0
