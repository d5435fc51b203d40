"""How long after its 201 a post shows in a follower's home timeline and in search."""

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .stages import breakdown

TIMEOUT_S = 15.0


@dataclass
class Lags:
    probes: int
    home_ms: list[float]
    search_ms: list[float]
    seen: list[tuple[str, float]] = field(default_factory=list)  # post id, when in home

    def lines(self, data_dir: Path | None = None, note: str = "") -> list[str]:
        """The lags, each followed by `note`; on the embedded stack (its data dir given)
        also where the home timeline's went, stage by stage (`bench.stages`)."""
        home = self._line("post -> follower's home timeline", self.home_ms, "p99 <= 300 ms")
        stages = breakdown(data_dir, self.seen) if data_dir is not None else None
        search = self._line("post -> searchable", self.search_ms, "p99 <= 500 ms")
        return [home + note, *([stages] if stages else []), search + note]

    def _line(self, name: str, samples: list[float], target: str) -> str:
        missing = self.probes - len(samples)
        late = f"   {missing} of {self.probes} not seen within {TIMEOUT_S:.0f} s" if missing else ""
        if not samples:
            return f"{name:<34} no samples{late}"
        cuts = statistics.quantiles(samples, n=100) if len(samples) > 1 else samples * 99
        return (f"{name:<34} samples {len(samples):>5}   p50 {cuts[49]:>7.1f} ms   "
                f"p99 {cuts[98]:>7.1f} ms   ({target}){late}")


async def _wait_for(http: httpx.AsyncClient, path: str, headers: dict[str, str],
                    post_id: str, started: float, timeout_s: float = TIMEOUT_S) -> float | None:
    while time.perf_counter() - started < timeout_s:
        response = await http.get(path, headers=headers)
        if response.status_code == 200 and any(p["id"] == post_id
                                                for p in response.json()["items"]):
            return (time.perf_counter() - started) * 1000
        await asyncio.sleep(0.02)
    return None


async def measure(base_url: str, author: tuple[str, str], reader: tuple[str, str],
                  duration_s: float) -> Lags:
    """Post as `author` for `duration_s`, one probe at a time; watch for each post as
    `reader` (who follows the author) in the home timeline and in search. The reader should
    follow no one else: the probe looks at the first page only."""
    as_author = {"Authorization": f"Bearer {author[0]}"}
    as_reader = {"Authorization": f"Bearer {reader[0]}"}
    lags = Lags(0, [], [])
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        follow = await http.put(f"/api/profiles/{author[1]}/follow", headers=as_reader)
        follow.raise_for_status()
        await asyncio.sleep(1)  # the follow reaches the read side before the first probe
        # One probe at a time, so that the probe's own polling stays a small load: a post,
        # then both reads polled every 20 ms until they show it (or time out).
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline:
            token = f"lag{uuid.uuid4().hex[:10]}"
            created = await http.post("/api/posts", headers=as_author,
                                      json={"text": f"probe {token}"})
            started, wall = time.perf_counter(), time.time()
            if created.status_code == 201:
                post_id = created.json()["id"]
                lags.probes += 1
                home, search = await asyncio.gather(
                    _wait_for(http, "/api/timelines/home", as_reader, post_id, started),
                    _wait_for(http, f"/api/search?q={token}", as_reader, post_id, started))
                if home is not None:
                    lags.home_ms.append(home)
                    lags.seen.append((post_id, wall + home / 1000))
                if search is not None:
                    lags.search_ms.append(search)
            await asyncio.sleep(0.1)
    return lags


async def settle(base_url: str, author: tuple[str, str], reader: tuple[str, str],
                 timeout_s: float = 300.0) -> float | None:
    """Seconds until a new post by `author` reaches `reader`'s home timeline: after a write
    load, how long the read side takes to work through what is queued."""
    as_author = {"Authorization": f"Bearer {author[0]}"}
    as_reader = {"Authorization": f"Bearer {reader[0]}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        follow = await http.put(f"/api/profiles/{author[1]}/follow", headers=as_reader)
        follow.raise_for_status()
        created = await http.post("/api/posts", headers=as_author, json={"text": "settle"})
        created.raise_for_status()
        started = time.perf_counter()
        waited = await _wait_for(http, "/api/timelines/home", as_reader, created.json()["id"],
                                 started, timeout_s=timeout_s)
    return None if waited is None else waited / 1000
