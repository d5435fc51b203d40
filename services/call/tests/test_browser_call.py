"""A headless Chromium page (fake camera and microphone) and an aiortc participant complete a
call through the same API and signaling: the browser trickles its candidates, aiortc does not.
"""

import asyncio
import json
import shutil
import urllib.parse
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.staticfiles import StaticFiles

from chassis.testing import live

from .conftest import peer, start_call, ws_url

CHROMIUM = shutil.which("chromium")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        # Host candidates as addresses, not mDNS names the other peer must resolve.
        "--disable-features=WebRtcHideLocalIpsWithMdns"]


@pytest.fixture
async def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make test installs it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


async def test_a_browser_and_an_aiortc_peer_complete_a_call(replicas, user, api, browser):
    one, two = await replicas(2)
    alice, bob = await user(one, "alice"), await user(two, "bob")
    started = await start_call(api, one, alice, [bob])
    a = peer(one, started, alice)
    pages = Starlette(routes=[])
    pages.mount("/", StaticFiles(directory=Path(__file__).parent / "browser"))
    async with live(pages) as site:
        try:
            await a.join()
            page = await browser.new_page()
            page.on("console", lambda m: print("browser:", m.text))
            query = urllib.parse.urlencode({
                "ws": ws_url(two, started["call_id"]), "token": bob.token,
                "ice": json.dumps(started["ice_servers"])})
            await page.goto(f"{site.url}/call.html?{query}")
            await asyncio.wait_for(a.link(bob.id).wait(), 30)
            for _ in range(300):
                inbound = await page.evaluate(f"window.inbound({json.dumps(alice.id)})")
                got = a.received.get(bob.id, {})
                if (inbound.get("video", 0) >= 10 and inbound.get("audio", 0) >= 10
                        and got.get("video", 0) >= 10 and got.get("audio", 0) >= 10):
                    break
                await asyncio.sleep(0.1)
            state = await page.evaluate("window.state")
            assert state["ice"][alice.id] in ("connected", "completed"), state
            assert not state["errors"], state
            assert inbound["video"] >= 10 and inbound["audio"] >= 10, inbound
            assert got["video"] >= 10 and got["audio"] >= 10, got
            await a.leave()
            await page.wait_for_function("window.state.frames.includes('ended')", timeout=10000)
        finally:
            await a.close()
