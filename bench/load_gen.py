"""The load generator of bench/load.py: HTTP/1.1 keep-alive clients on raw asyncio streams
(uvloop), spread over several processes so that the generator is never the bottleneck.

Two ways to send:

- **open loop** - each client sends at its own fixed rate, at scheduled times that do not depend
  on the answers (as clinics polling a job do). A request's latency is counted from its scheduled
  time, so a slow answer that delays the client's next request is charged to that request too
  (no coordinated omission).
- **saturation** - each connection sends its next request as soon as the last answer is in. This
  measures how many requests one API process serves, and with the API's CPU time what each costs;
  its latencies are queueing, not the cost of a request.

Every process reports its own CPU time, so a run shows how busy the generator itself was, and its
send lag (how late a request left after its scheduled time while its connection was free).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - the service depends on uvloop; plain asyncio also works
    uvloop = None


@dataclass(frozen=True)
class Plan:
    """What one generator process does (all times on the system-wide monotonic clock)."""

    host: str
    port: int
    key: str
    paths: tuple[str, ...]  # client i requests paths[i % len(paths)]
    clients: int  # connections of this process
    start: float  # time.monotonic() at which the measured window opens
    duration: float  # seconds of the measured window
    rate: float = 0.0  # requests per second per client; 0: saturation (closed loop)
    conditional: bool = False  # send If-None-Match with the last ETag, as spottune's client does
    first_client: int = 0  # index of this process's first client among all processes
    all_clients: int = 0  # clients of all processes together (open loop: spreads the phases)


@dataclass
class Tally:
    """What one process measured inside the window (latencies and server times in ms)."""

    latency_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0
    wall_s: float = 0.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) in a raw response head."""
    at = head.lower().find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start:end].strip()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    length = _header(head, b"content-length")
    if length is not None:
        await reader.readexactly(int(length))
        return
    if (_header(head, b"transfer-encoding") or b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return


def _server_ms(head: bytes) -> float | None:
    """``Server-Timing: app;dur=<ms>`` as the API sends it."""
    value = _header(head, b"server-timing")
    if value is None or b"dur=" not in value:
        return None
    return float(value.split(b"dur=", 1)[1].split(b";")[0].split(b",")[0])


class _Connection:
    def __init__(self, plan: Plan, path: str) -> None:
        self.plan = plan
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\n"
            f"Authorization: Bearer {plan.key}\r\n"
        ).encode()
        self.etag: bytes | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.plan.host, self.plan.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self) -> tuple[int, float | None]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        extra = b"If-None-Match: " + self.etag + b"\r\n" if self.etag else b""
        self.writer.write(self.request + extra + b"\r\n")
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        await _read_body(self.reader, head)
        if self.plan.conditional and status == 200:
            self.etag = _header(head, b"etag")
        if (_header(head, b"connection") or b"").lower() == b"close":
            self.close()
        return status, _server_ms(head)


def _record(tally: Tally, status: int, server: float | None, latency_s: float) -> None:
    tally.statuses[status] += 1
    tally.latency_ms.append(latency_s * 1000)
    if server is not None:
        tally.server_ms.append(server)
    if status >= 400:
        tally.errors[f"HTTP {status}"] += 1


async def _open_client(conn: _Connection, plan: Plan, index: int, tally: Tally) -> None:
    """Sends at start + (phase + k) / rate; latency from that scheduled time."""
    period = 1.0 / plan.rate
    total = max(plan.all_clients, plan.clients)  # phases spread evenly over one period
    phase = index / total * period
    end = plan.start + plan.duration
    k = 0
    while (scheduled := plan.start + phase + k * period) < end:
        k += 1
        now = time.monotonic()
        if scheduled > now:
            await asyncio.sleep(scheduled - now)
        tally.send_lag_ms.append(max(0.0, time.monotonic() - scheduled) * 1000)
        if (answer := await _get(conn, tally)) is not None:
            _record(tally, *answer, time.monotonic() - scheduled)


async def _get(conn: _Connection, tally: Tally) -> tuple[int, float | None] | None:
    """One request's (status, server time), or None after counting its error (the connection
    is closed and reopened by the next request)."""
    try:
        return await conn.get()
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        tally.errors[type(exc).__name__] += 1
        conn.close()
        return None


async def _closed_client(conn: _Connection, plan: Plan, tally: Tally) -> None:
    end = plan.start + plan.duration
    now = time.monotonic()
    if plan.start > now:
        await asyncio.sleep(plan.start - now)
    while (sent := time.monotonic()) < end:
        if (answer := await _get(conn, tally)) is None:
            continue
        done = time.monotonic()
        if done <= end:
            _record(tally, *answer, done - sent)


async def _run(plan: Plan) -> Tally:
    tally = Tally()
    conns = [
        _Connection(plan, plan.paths[(plan.first_client + i) % len(plan.paths)])
        for i in range(plan.clients)
    ]
    await asyncio.gather(*(c.open() for c in conns))
    now = time.monotonic()
    if plan.start > now:
        await asyncio.sleep(plan.start - now)
    cpu, wall = _cpu_s(), time.monotonic()
    if plan.rate > 0:
        jobs = [
            _open_client(c, plan, plan.first_client + i, tally) for i, c in enumerate(conns)
        ]
    else:
        jobs = [_closed_client(c, plan, tally) for c in conns]
    await asyncio.gather(*jobs)
    tally.cpu_s, tally.wall_s = _cpu_s() - cpu, time.monotonic() - wall
    for c in conns:
        c.close()
    return tally


def run_plan(plan: Plan) -> dict[str, Any]:
    """Run one process's plan; returns its tally as plain data (picklable)."""
    if uvloop is not None:
        uvloop.install()
    tally = asyncio.run(_run(plan))
    return {
        "latency_ms": tally.latency_ms,
        "server_ms": tally.server_ms,
        "send_lag_ms": tally.send_lag_ms,
        "statuses": dict(tally.statuses),
        "errors": dict(tally.errors),
        "cpu_s": tally.cpu_s,
        "wall_s": tally.wall_s,
    }


def split(total: int, parts: int) -> list[int]:
    """``total`` clients over ``parts`` processes, as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Generator:
    """A pool of generator processes (spawned, so they share nothing with the caller)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool = multiprocessing.get_context("spawn").Pool(processes)

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *_: object) -> None:
        self._pool.terminate()
        self._pool.join()

    def start(self, plan: Plan) -> Any:
        """Start ``plan.clients`` clients split over the processes; ``.get()`` the tallies."""
        plans, first = [], 0
        for n in split(plan.clients, self.processes):
            if n:
                plans.append(Plan(**{
                    **plan.__dict__, "clients": n, "first_client": first,
                    "all_clients": plan.clients,
                }))
                first += n
        return self._pool.map_async(run_plan, plans)
