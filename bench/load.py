"""Drive load with wrk (C, so the load generator does not starve the servers of CPU)."""

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

LUA = """
-- At a set rate (requests per second, 0 for as fast as the server answers), each thread keeps
-- a schedule: a connection waits for its request's slot, so requests go out steadily rather
-- than each as soon as the last one's answer came.
local rate = %(rate)s
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local clock = ffi.new("bench_timespec")
local next_ms = nil

local function now_ms()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

if rate > 0 then
  function delay()
    local now = now_ms()
    next_ms = next_ms or now
    local wait = next_ms - now
    next_ms = next_ms + %(threads)d * 1000 / rate
    return wait > 0 and wait or 0
  end
end

local lines = {}
for line in io.lines("%(users)s") do
  local token, id = line:match("^(%%S+) (%%S+)$")
  lines[#lines + 1] = {token = token, id = id}
end
local n = #lines
local counter = 0
local thread_offset = 0
-- Each (follower, followee) pair once: the n(n-1) pairs are cut into 2 x threads slices, one
-- per thread of the warm-up (part 1) and of the measured run (part 0), so that no follow
-- measured repeats one made before (a repeat changes nothing and costs less).
local slice = math.floor(n * (n - 1) / (2 * %(threads)d))
local next_offset = %(part)d * %(threads)d * slice

function setup(thread)
  thread:set("thread_offset", next_offset)
  next_offset = next_offset + slice
end

function request()
  local k = thread_offset + counter
  counter = counter + 1
  local me = lines[(k %% n) + 1]
  local headers = {["Authorization"] = "Bearer " .. me.token}
  if "%(mode)s" == "me" then
    return wrk.format("GET", "/api/profiles/me", headers)
  end
  if "%(mode)s" == "home" then
    return wrk.format("GET", "/api/timelines/home", headers)
  end
  if "%(mode)s" == "post" then
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", "/api/posts", headers,
      '{"text": "bench post ' .. k .. ' 今日のラーメン #bench"}')
  end
  local step = 1 + (math.floor(k / n) %% (n - 1))
  local target = lines[((k + step) %% n) + 1]
  return wrk.format("PUT", "/api/profiles/" .. target.id .. "/follow", headers)
end
"""


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    throughput: float
    p50_ms: float
    p99_ms: float

    def line(self) -> str:
        return (f"{self.name:<34} {self.throughput:>9.0f} req/s   p50 {self.p50_ms:>7.2f} ms   "
                f"p99 {self.p99_ms:>7.2f} ms   requests {self.requests:>7}   errors {self.errors}")


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}[unit]


def run_wrk(name: str, base_url: str, users: list[tuple[str, str]], mode: str, *,
            connections: int, duration_s: int, threads: int = 2, warmup_s: int = 0,
            rate: float = 0) -> Result:
    """Run wrk against `base_url` with one of the scripted request mixes, after `warmup_s`
    seconds of the same load whose numbers are dropped; at most `rate` requests a second
    if one is given (latencies then count from each request's sending, not its slot)."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: run `make deps` (apt package wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="asyncsns-wrk-"))
    (workdir / "users.txt").write_text("".join(f"{t} {i}\n" for t, i in users))

    def wrk(seconds: int, part: int) -> str:
        script = workdir / f"script{part}.lua"
        script.write_text(LUA % {"users": workdir / "users.txt", "mode": mode,
                                 "threads": threads, "part": part, "rate": rate})
        return subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
             "-s", str(script), base_url], capture_output=True, text=True, check=True).stdout

    if warmup_s:
        wrk(warmup_s, part=1)  # first connections, first runs of code paths, cold caches
    out = wrk(duration_s, part=0)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Result(
        name=name, requests=requests, errors=errors,
        throughput=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)))
