#!/usr/bin/env python3
"""Slow HTTP/1.1 clients against one etcd-compatible member (bench/slow-clients.sh).

  slow_clients.py run --port P --pid PID --scenario headers|body|reader \
      --clients N --hold SECONDS [--label NAME] [--rss-limit-mib M]
      Opens N connections to 127.0.0.1:P that behave badly (see SCENARIOS),
      holds them for SECONDS while sampling the server process PID once a
      second (VmRSS, open fds, one well-behaved range through curl), then
      closes them and prints one JSON object with the results.
  slow_clients.py table RESULTS.jsonl
      Prints the markdown table for the JSON lines written by `run`.

Standard library only. Connects to 127.0.0.1 only; every loop is bounded by
the hold time, a fixed count or a timeout.
"""

import argparse
import asyncio
import base64
import fcntl
import json
import os
import select
import socket
import statistics
import struct
import sys
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"
DRIP_INTERVAL = 5.0  # seconds between two bytes of a slow client
CONNECT_TIMEOUT = 10.0
CONNECT_PARALLEL = 256
AFTER_WAIT = 5.0  # seconds between closing the slow connections and the "after" sample
SIOCINQ = 0x541B  # bytes waiting in a socket's receive queue (FIONREAD)

HEADERS_START = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n"
# One byte of this every DRIP_INTERVAL; never a CR or LF, so the headers never end.
HEADERS_DRIP = b"X-Slowloris: " + b"a" * 4096

BODY = json.dumps({"key": "YQ==", "value": "x" * 1000}).encode()[:1000]
BODY_START = (b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n")

WATCH_JSON = b'{"create_request":{"key":"YQ==","range_end":"Yg=="}}'
WATCH_START = (b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(WATCH_JSON) + WATCH_JSON + b"\r\n0\r\n\r\n")
# The body is complete: etcd's Go HTTP/1 server writes no response while a
# request body is still open, so an unfinished body would never be answered.

SCENARIOS = {
    "headers": "(a) slowloris headers: request line + Host, then 1 header byte / 5 s",
    "body": "(b) slow body: kv/put with Content-Length 1000, then 1 body byte / 5 s",
    "reader": "(c) slow reader: watch on prefix a, never read, 64 KiB puts under a",
}


def log(msg):
    print(f"[slow_clients {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Conn:
    __slots__ = ("sock", "opened", "closed", "how", "sent", "reply")

    def __init__(self, sock, opened):
        self.sock = sock
        self.opened = opened  # monotonic time the request bytes went out
        self.closed = None  # monotonic time the server's close was seen
        self.how = None  # "eof", "reset" or "write error"
        self.sent = 0  # drip bytes sent
        self.reply = None  # first line of anything the server answered


class Run:
    def __init__(self, a):
        self.a = a
        self.loop = asyncio.get_running_loop()
        self.conns = []
        self.by_fd = {}
        self.connect_failures = 0
        self.samples = []  # (t, rss_kib, fds)
        self.probes = []  # (t, http_code, seconds)
        self.probe_tasks = []
        self.abort = None  # reason the hold ended early
        self.ep = select.epoll()
        self.loop.add_reader(self.ep.fileno(), self.on_epoll)

    # -- closures seen through epoll (EPOLLRDHUP: FIN; EPOLLHUP/ERR: reset) --

    def watch_mask(self):
        m = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
        if self.a.scenario != "reader":  # the slow reader never reads
            m |= select.EPOLLIN
        return m

    def on_epoll(self):
        now = time.monotonic()
        for fd, ev in self.ep.poll(0, 1024):
            c = self.by_fd.get(fd)
            if c is None or c.closed is not None:
                continue
            if ev & select.EPOLLIN:
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    self.mark_closed(c, now, "reset")
                    continue
                if data:
                    if c.reply is None:
                        c.reply = data.split(b"\r\n", 1)[0].decode("latin-1")[:60]
                    continue
                if data == b"":
                    self.mark_closed(c, now, "eof")
                    continue
            if ev & (select.EPOLLHUP | select.EPOLLERR):
                self.mark_closed(c, now, "reset")
            elif ev & select.EPOLLRDHUP:
                self.mark_closed(c, now, "eof")

    def mark_closed(self, c, now, how):
        c.closed = now
        c.how = how
        try:
            self.ep.unregister(c.sock.fileno())
        except OSError:
            pass

    def open_conns(self):
        return [c for c in self.conns if c.closed is None]

    # -- the slow connections --

    async def connect_one(self, sem, first):
        async with sem:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                await asyncio.wait_for(self.loop.sock_connect(s, (HOST, self.a.port)), CONNECT_TIMEOUT)
                s.send(first)  # small: always fits the empty send buffer
            except (OSError, asyncio.TimeoutError):
                s.close()
                self.connect_failures += 1
                return
            c = Conn(s, time.monotonic())
            self.conns.append(c)
            self.by_fd[s.fileno()] = c
            self.ep.register(s.fileno(), self.watch_mask())

    async def connect_all(self):
        first = {"headers": HEADERS_START, "body": BODY_START, "reader": WATCH_START}[self.a.scenario]
        sem = asyncio.Semaphore(CONNECT_PARALLEL)
        await asyncio.gather(*(self.connect_one(sem, first) for _ in range(self.a.clients)))

    async def drip(self, until):
        """One more byte on every open connection every DRIP_INTERVAL."""
        src = HEADERS_DRIP if self.a.scenario == "headers" else BODY
        limit = len(src) - 1 if self.a.scenario == "headers" else len(BODY) - 1  # never complete
        while time.monotonic() + DRIP_INTERVAL < until and not self.abort:
            await asyncio.sleep(DRIP_INTERVAL)
            for c in self.open_conns():
                if c.sent >= limit:
                    continue
                try:
                    c.sock.send(src[c.sent:c.sent + 1])
                    c.sent += 1
                except BlockingIOError:
                    pass
                except OSError:
                    self.mark_closed(c, time.monotonic(), "write error")

    # -- the well-behaved side --

    async def probe(self, t):
        url = f"http://{HOST}:{self.a.port}/v3/kv/range"
        try:
            p = await asyncio.create_subprocess_exec(
                "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                "-X", "POST", url, "-d", '{"key":"YQ=="}',
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            out, _ = await asyncio.wait_for(p.communicate(), 15)
            code, secs = out.decode().split()
            self.probes.append((t, code, float(secs)))
        except (OSError, ValueError, asyncio.TimeoutError):
            self.probes.append((t, "err", 5.0))

    async def sample(self, until, t0):
        """Once a second until `until`: RSS, fds, and a probe (each probe bounded by curl -m 5)."""
        while time.monotonic() < until and not self.abort:
            t = time.monotonic() - t0
            rss, fds = rss_kib(self.a.pid), fd_count(self.a.pid)
            if rss is None:
                self.abort = "server process gone"
                break
            self.samples.append((t, rss, fds))
            if rss > self.a.rss_limit_mib * 1024:
                self.abort = f"RSS above {self.a.rss_limit_mib} MiB, hold ended early"
                break
            self.probe_tasks.append(asyncio.ensure_future(self.probe(t)))
            await asyncio.sleep(1.0)

    def put_one(self, i):
        body = json.dumps({"key": base64.b64encode(b"a/%03d" % i).decode(),
                           "value": base64.b64encode(os.urandom(self.a.value_size)).decode()}).encode()
        req = urllib.request.Request(f"http://{HOST}:{self.a.port}/v3/kv/put", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    async def puts(self, until):
        ok = 0
        start = time.monotonic()
        n = 0
        for i in range(self.a.puts):
            if self.abort or time.monotonic() >= until:
                break
            rss = rss_kib(self.a.pid)
            if rss is not None and rss > self.a.rss_limit_mib * 1024:
                self.abort = f"RSS above {self.a.rss_limit_mib} MiB, puts stopped"
                break
            n += 1
            ok += await self.loop.run_in_executor(None, self.put_one, i)
        return n, ok, time.monotonic() - start

    def queued_at_clients(self):
        total = 0
        for c in self.conns:
            if c.closed is None:
                try:
                    total += struct.unpack("i", fcntl.ioctl(c.sock.fileno(), SIOCINQ, b"\0" * 4))[0]
                except OSError:
                    pass
        return total

    async def main(self):
        a = self.a
        t0 = time.monotonic()
        before = rss_kib(a.pid)
        fds_before = fd_count(a.pid)
        log(f"{a.label} {a.scenario}: RSS {before} KiB, {fds_before} fds; opening {a.clients} connections")
        # Sampling covers the connect phase and the hold.
        connect_deadline = t0 + a.clients / 50 + 60  # bound for the connect phase
        sampler = asyncio.ensure_future(self.sample(connect_deadline + a.hold + 60, t0))
        await self.connect_all()
        t_hold = time.monotonic()
        until = t_hold + a.hold
        log(f"{len(self.conns)} connected in {t_hold - t0:.1f} s ({self.connect_failures} failed); holding {a.hold} s")
        extra = {}
        tasks = []
        if a.scenario in ("headers", "body"):
            tasks.append(asyncio.ensure_future(self.drip(until)))
        else:
            # Wait (bounded) until each watch's created response is in its receive queue.
            created = 0
            for _ in range(100):
                created = sum(1 for c in self.open_conns() if self.inq(c) > 0)
                if created >= len(self.open_conns()) or time.monotonic() > t_hold + 20:
                    break
                await asyncio.sleep(0.2)
            extra["watches_created"] = created
            log(f"{created} watches answered; {a.puts} puts of {a.value_size} B under a/")
            put_task = asyncio.ensure_future(self.puts(until))
            tasks.append(put_task)
        while time.monotonic() < until and not self.abort:
            await asyncio.sleep(min(1.0, max(0.0, until - time.monotonic())))
        hold_end = time.monotonic()
        sampler.cancel()
        if a.scenario == "reader":
            n, ok, secs = await put_task
            extra.update(puts=n, puts_ok=ok, puts_seconds=round(secs, 1),
                         queued_at_clients=self.queued_at_clients())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self.probe_tasks, return_exceptions=True)
        still_open = len(self.open_conns())
        closed = [c for c in self.conns if c.closed is not None]
        fds_hold_end = fd_count(a.pid)
        # Close our side, then let the server notice before the "after" sample.
        self.loop.remove_reader(self.ep.fileno())
        for c in self.conns:
            c.sock.close()
        self.ep.close()
        await asyncio.sleep(AFTER_WAIT)
        after = rss_kib(a.pid)
        fds_after = fd_count(a.pid)

        lat = sorted(s for (t, code, s) in self.probes if code == "200")
        hows = {}
        replies = {}
        for c in closed:
            hows[c.how] = hows.get(c.how, 0) + 1
            if c.reply:
                replies[c.reply] = replies.get(c.reply, 0) + 1
        ttc = sorted(c.closed - c.opened for c in closed)
        res = {
            "server": a.label, "scenario": a.scenario, "clients": a.clients, "hold": a.hold,
            "connected": len(self.conns), "connect_failures": self.connect_failures,
            "connect_seconds": round(t_hold - t0, 1), "held_seconds": round(hold_end - t_hold, 1),
            "rss_before_kib": before,
            "rss_max_kib": max((r for (_, r, _) in self.samples), default=None),
            "rss_after_kib": after,
            "fds_before": fds_before, "fds_max": max((f for (_, _, f) in self.samples if f), default=None),
            "fds_hold_end": fds_hold_end, "fds_after": fds_after,
            "probes": len(self.probes),
            "probes_ok": len(lat),
            "probe_codes": sorted({code for (_, code, _) in self.probes}),
            "probe_p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
            "probe_max_ms": round(lat[-1] * 1000, 1) if lat else None,
            "closed_by_server": len(closed), "still_open": still_open, "closed_how": hows,
            "replies_before_close": replies,
            "close_median_s": round(statistics.median(ttc), 1) if ttc else None,
            "close_min_s": round(ttc[0], 1) if ttc else None,
            "close_max_s": round(ttc[-1], 1) if ttc else None,
            "abort": self.abort,
            "samples": [(round(t, 1), r, f) for (t, r, f) in self.samples],
            "probe_log": [(round(t, 1), code, round(s * 1000, 1)) for (t, code, s) in self.probes],
        }
        res.update(extra)
        log(f"done: {len(closed)} closed by the server, RSS max {res['rss_max_kib']} KiB, "
            f"{len(lat)}/{len(self.probes)} probes ok")
        print(json.dumps(res))

    def inq(self, c):
        try:
            return struct.unpack("i", fcntl.ioctl(c.sock.fileno(), SIOCINQ, b"\0" * 4))[0]
        except OSError:
            return 0


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.0f}"


def table(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    out = ["| server | scenario | slow conns | RSS before / max / after (MiB) | fds max | "
           "probes ok | probe p50 / max (ms) | closed by server | median s to close | notes |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        notes = []
        if r["connect_failures"]:
            notes.append(f"{r['connect_failures']} connects failed")
        if r["scenario"] == "reader":
            notes.append(f"{r.get('watches_created', 0)} watches created; "
                         f"{r.get('puts_ok', 0)}/{r.get('puts', 0)} puts ok in {r.get('puts_seconds', 0)} s; "
                         f"{r.get('queued_at_clients', 0) / 2**20:.0f} MiB unread at clients")
        if r["closed_how"]:
            notes.append("closes: " + ", ".join(f"{k} {v}" for k, v in sorted(r["closed_how"].items())))
        if r["replies_before_close"]:
            notes.append("replies: " + ", ".join(f"'{k}' x{v}" for k, v in sorted(r["replies_before_close"].items())))
        bad = [c for c in r["probe_codes"] if c != "200"]
        if bad:
            notes.append("probe codes " + "/".join(r["probe_codes"]))
        notes.append(f"fds after {r['fds_after']}")
        if r["abort"]:
            notes.append("**" + r["abort"] + "**")
        close = "-" if r["close_median_s"] is None else (
            f"{r['close_median_s']} ({r['close_min_s']}-{r['close_max_s']})")
        lat = "-" if r["probe_p50_ms"] is None else f"{r['probe_p50_ms']:.0f} / {r['probe_max_ms']:.0f}"
        out.append(f"| {r['server']} | {r['scenario']} | {r['connected']} | "
                   f"{mib(r['rss_before_kib'])} / {mib(r['rss_max_kib'])} / {mib(r['rss_after_kib'])} | "
                   f"{r['fds_max']} | {r['probes_ok']}/{r['probes']} | {lat} | "
                   f"{r['closed_by_server']}/{r['connected']} | {close} | {'; '.join(notes)} |")
    print("\n".join(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--pid", type=int, required=True)
    r.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    r.add_argument("--clients", type=int, default=10000)
    r.add_argument("--hold", type=int, default=60)
    r.add_argument("--label", default="server")
    r.add_argument("--puts", type=int, default=200)
    r.add_argument("--value-size", type=int, default=65536)
    r.add_argument("--rss-limit-mib", type=int, default=6144,
                   help="end the hold early (and stop putting) once the server's RSS is above this")
    t = sub.add_parser("table")
    t.add_argument("results")
    a = p.parse_args()
    if a.cmd == "table":
        table(a.results)
        return
    if a.clients < 1 or a.hold < 1:
        p.error("--clients and --hold must be positive")
    asyncio.run(run(a))


async def run(a):
    await Run(a).main()


if __name__ == "__main__":
    main()
