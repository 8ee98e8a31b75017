#!/usr/bin/env python3
"""Helpers of mountscripts/netfuzz (see its header and README.md "Network fuzzing").

  netfuzz_tool.py fuzz   OPTIONS   fuzz connections until --seconds pass or --stop-file exists
  netfuzz_tool.py replay OPTIONS --job N [--job N ...]   sends those jobs again, alone, and prints each outcome
  netfuzz_tool.py jobs   --seed S --first N --count K     prints what jobs N..N+K-1 of a seed send (no network)
  netfuzz_tool.py report RESULTS                           the summary table (exit 1 if anything failed)

OPTIONS: --seed S --server HOST:PORT --agent HOST:PORT (twice) --udp HOST:PORT
(each agent's heartbeat socket) --corpus DIR (Fuzz/corpus/message) --export
NAME [--blob-inode N] [--concurrency N] [--kinds LIST] [--watch NAME=PID ...]
--out STATS.json --log JOBS.jsonl --events EVENTS.log

Every job is made from its own RNG, random.Random("netfuzz:SEED:N"), so job N
of a seed sends the same bytes again whatever ran beside it: `replay` and
`jobs` redo or show one job from the seed and number in the job log.

Standard library only.
"""
import argparse
import collections
import json
import os
import random
import selectors
import socket
import struct
import sys
import threading
import time

# --- the wire (Sources/BatonCore/Protocol/Message.swift, Operation.swift) ------
# A frame is a u32 little-endian length, then that many bytes of message; a
# message starts with its tag. Frames over MAX_FRAME are refused at once
# (BatonRuntime/Network/Framing.swift); WireLimits.maxFrameBytes = 1 MiB + 64 KiB.

MAX_FRAME = (1 << 20) + 64 * 1024
PROTOCOL_VERSION = 1
TAG_HELLO, TAG_WELCOME, TAG_REFUSED, TAG_REQUEST, TAG_REPLY = 1, 2, 3, 4, 5
TAG_PROBE, TAG_CHALLENGE, TAG_AUTHENTICATE = 10, 20, 21
TAG_AGENT_REQUEST = 40
# Operation tags: 1..9 are queries (lookup getattr readlink read readdir statfs
# getxattr listxattr fsync); 20 and up change the namespace.
OP_LOOKUP, OP_GETATTR, OP_READ, OP_READDIR, OP_STATFS = 1, 2, 4, 5, 6
OP_FIRST_MUTATION = 20
REFUSALS = {1: "unknownExport", 2: "notActive", 3: "badVersion", 4: "malformed", 5: "shuttingDown",
            6: "unauthenticated", 7: "staleEpoch", 8: "replicaFailed"}
ROOT_INODE = 1
DATAGRAM_MAX = 512          # AgentDatagram.maxBytes
DIGEST = 32                 # HMAC-SHA256


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return u32(len(b)) + b


def frame(body):
    return u32(len(body)) + body


def hello(export, session):
    return frame(bytes([TAG_HELLO]) + string(export) + u64(session) + u32(PROTOCOL_VERSION))


def request(seq, op):
    return frame(bytes([TAG_REQUEST]) + u64(seq) + u64(0) + op)


def op_getattr(ino):
    return bytes([OP_GETATTR]) + u64(ino)


def op_lookup(parent, name):
    return bytes([OP_LOOKUP]) + u64(parent) + string(name)


def op_read(ino, offset, size):
    return bytes([OP_READ]) + u64(ino) + u64(0) + u64(offset) + u32(size)


def op_readdir(ino, cookie, max_bytes):
    return bytes([OP_READDIR]) + u64(ino) + u64(cookie) + u32(max_bytes)


def op_statfs():
    return bytes([OP_STATFS])


def split_frames(data):
    """Frames as the server's decoder cuts a stream: (body offset, body length)
    for each whole frame; stops at a frame over MAX_FRAME or a partial one."""
    out, i = [], 0
    while i + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, i)
        if n > MAX_FRAME or i + 4 + n > len(data):
            break
        out.append((i + 4, n))
        i += 4 + n
    return out


def sanitize(data):
    """Anyone who says hello may change the export, and the fuzzer must not
    change fio's files: in a stream to the export server, every frame that the
    server would decode as a request of a mutation (operation tag 20 or up,
    write included) gets a query's tag instead (it then decodes as a query or
    not at all). Returns (bytes, frames changed)."""
    out = bytearray(data)
    changed = 0
    for off, n in split_frames(out):
        if n >= 18 and out[off] == TAG_REQUEST and out[off + 17] >= OP_FIRST_MUTATION:
            out[off + 17] = 1 + out[off + 17] % 9
            changed += 1
    return bytes(out), changed


def parse_frames(data):
    """(tag, body) of each whole frame received; the rest is ignored."""
    return [(data[o], data[o:o + n]) for o, n in split_frames(data) if n > 0]


# --- the kinds of input ----------------------------------------------------------

KINDS = ["random", "mutated", "hello-garbage", "huge-length", "half-open", "no-read", "flood", "udp"]
# Known to fail the server over (see README "Network fuzzing"): only when asked for.
EXTRA_KINDS = ["pipeline"]
WEIGHTS = {"random": 20, "mutated": 34, "hello-garbage": 16, "huge-length": 8, "half-open": 6, "no-read": 3,
           "flood": 2, "udp": 6, "pipeline": 3}
INTERESTING32 = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, MAX_FRAME - 4, MAX_FRAME, MAX_FRAME + 1,
                 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


class Corpus:
    def __init__(self, directory):
        self.bodies = []
        for name in sorted(os.listdir(directory)):
            p = os.path.join(directory, name)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    b = f.read()
                if b:
                    self.bodies.append(b)
        if not self.bodies:
            raise SystemExit(f"netfuzz_tool: no corpus files in {directory}")


def mutate_body(rng, body, corpus):
    b = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        m = rng.randrange(8)
        if m == 0 and b:                                   # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif m == 1 and b:                                 # interesting bytes
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFE, 0xFF, rng.randrange(256)])
        elif m == 2 and len(b) >= 4:                       # an interesting u32 (a length field, a count)
            i = rng.randrange(len(b) - 3)
            b[i:i + 4] = u32(rng.choice(INTERESTING32))
        elif m == 3 and b:                                 # truncation
            del b[rng.randrange(len(b)):]
        elif m == 4:                                       # splicing with another message
            other = rng.choice(corpus.bodies)
            b = b[:rng.randint(0, len(b))] + bytearray(other[rng.randint(0, len(other)):])
        elif m == 5:                                       # bytes inserted
            i = rng.randint(0, len(b))
            b[i:i] = rng.randbytes(rng.randint(1, 64))
        elif m == 6 and b:                                 # bytes deleted
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 16)]
        elif m == 7 and b:                                 # the tag of another message
            b[0] = rng.choice([rng.randrange(256), rng.choice(corpus.bodies)[0]])
    return bytes(b)


def mutated_frames(rng, corpus, count):
    """COUNT mutated corpus frames: mostly with a length prefix that fits (so
    the decoder sees them), else with the prefix changed too."""
    out = b""
    for _ in range(count):
        body = mutate_body(rng, rng.choice(corpus.bodies), corpus)
        r = rng.random()
        if r < 0.75:
            n = len(body)
        elif r < 0.85:
            n = max(0, len(body) + rng.choice([-16, -4, -2, -1, 1, 2, 4, 16, 1000]))
        elif r < 0.92:
            n = rng.choice(INTERESTING32)
        else:
            n = rng.randrange(1 << 32)
        out += u32(n) + body
    return out


def garbage(rng, corpus):
    r = rng.random()
    if r < 0.4:
        return rng.randbytes(rng.choice([1, 3, 4, 5, 8, 17, 64, 512, 4096, rng.randint(1, 65536)]))
    if r < 0.85:
        return mutated_frames(rng, corpus, rng.randint(1, 8))
    # Valid queries with garbage between them.
    out = b""
    for i in range(rng.randint(1, 8)):
        out += request(rng.randrange(1, 1 << 20), rng.choice(
            [op_getattr(ROOT_INODE), op_statfs(), op_readdir(ROOT_INODE, 0, rng.choice([0, 4096, 1 << 20])),
             op_lookup(ROOT_INODE, rng.choice(["fio", "meta", "netfuzz", "..", "", "x" * 256])),
             op_getattr(rng.randrange(1 << 64))]))
        if rng.random() < 0.5:
            out += rng.randbytes(rng.randint(1, 32))
    return out


class Job:
    """What one job sends, drawn from its own RNG."""

    def __init__(self, seed, index, corpus, kinds, targets):
        self.index = index
        rng = self.rng = random.Random(f"netfuzz:{seed}:{index}")
        self.kind = rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
        if self.kind == "udp":
            self.target = rng.choice(targets["udp"])
        elif self.kind in ("no-read", "pipeline"):
            self.target = ("server", targets["server"])
        else:
            r = rng.random()
            self.target = ("server", targets["server"]) if r < 0.5 else (
                ("agent-a", targets["agents"][0]) if r < 0.75 else ("agent-b", targets["agents"][1]))
        self.corpus = corpus

    def describe(self):
        return {"job": self.index, "kind": self.kind, "target": self.target[0]}


# --- sending ------------------------------------------------------------------------


def parse_addr(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def connect(addr, timeout=3.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    return s


def send_counted(s, data, deadline):
    """Sends DATA; returns (bytes sent, 'ok' | 'reset' | 'stalled')."""
    sent = 0
    view = memoryview(data)
    while sent < len(data):
        left = deadline - time.monotonic()
        if left <= 0:
            return sent, "stalled"
        s.settimeout(min(left, 2.0))
        try:
            n = s.send(view[sent:sent + 65536])
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return sent, "reset"
        except OSError:
            return sent, "reset"
        sent += n
    return sent, "ok"


def read_answer(s, seconds, limit=1 << 16):
    """Reads until EOF, SECONDS pass or LIMIT bytes; returns (bytes, how it ended)."""
    data = b""
    deadline = time.monotonic() + seconds
    while len(data) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "open"
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return data, "open"
        except (ConnectionResetError, ConnectionAbortedError, OSError):
            return data, "reset"
        if not chunk:
            return data, "closed"
        data += chunk
    return data, "open"


def outcome_of(data, ended):
    """refused:REASON, welcome, challenge, answered, or how the connection ended."""
    frames = parse_frames(data)
    for tag, body in frames:
        if tag == TAG_REFUSED and len(body) >= 2:
            return "refused:" + REFUSALS.get(body[1], str(body[1]))
    tags = [t for t, _ in frames]
    if TAG_REPLY in tags:
        return "answered+" + ended
    if TAG_WELCOME in tags:
        return "welcome+" + ended
    if TAG_CHALLENGE in tags:
        return "challenge+" + ended
    return ended


def hard_close(s):
    """Closes with a reset (SO_LINGER 0): what a crashed client leaves."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.kinds = {}
        self.sanitized = 0
        self.stop = False

    def add(self, kind, target, connections=0, sent=0, datagrams=0, outcome=None, error=None):
        with self.lock:
            k = self.kinds.setdefault(kind, {"jobs": 0, "connections": 0, "bytes": 0, "datagrams": 0,
                                             "connect_errors": 0, "targets": collections.Counter(),
                                             "outcomes": collections.Counter()})
            k["connections"] += connections
            k["bytes"] += sent
            k["datagrams"] += datagrams
            if outcome:
                k["outcomes"][outcome] += 1
            if error:
                k["connect_errors"] += 1
                k["outcomes"]["connect:" + error] += 1

    def job_done(self, kind, target):
        with self.lock:
            k = self.kinds[kind]
            k["jobs"] += 1
            k["targets"][target] += 1


def lookup_path(addr, export, path):
    """The inode of PATH in the export, looked up as a client (0 if not found)."""
    s = connect(addr)
    try:
        s.sendall(hello(export, (1 << 62) | random.getrandbits(62)))
        got, _ = read_answer(s, 3, limit=13)
        if not any(t == TAG_WELCOME for t, _ in parse_frames(got)):
            return 0
        ino = ROOT_INODE
        for seq, name in enumerate(p for p in path.split("/") if p):
            s.sendall(request(seq + 1, op_lookup(ino, name)))
            data = b""
            while not split_frames(data):
                s.settimeout(3)
                chunk = s.recv(65536)
                if not chunk:
                    return 0
                data += chunk
            o, n = split_frames(data)[0]
            body = data[o:o + n]
            # reply: tag, sequence, epoch, then the reply: entry (3) starts with the inode
            if body[0] != TAG_REPLY or len(body) < 26 or body[17] != 3:
                return 0
            (ino,) = struct.unpack_from("<Q", body, 18)
        return ino
    except OSError:
        return 0
    finally:
        s.close()


class Holder(threading.Thread):
    """Keeps the half-open connections until their time is up (so that a
    worker need not wait), at most MAX at once, and notes how each ended:
    closed by the peer (within 1 s, 1-10 s, after 10 s) or held to the end.
    epoll (selectors), not select(): the fuzzer's descriptors pass 1024."""
    MAX = 512

    def __init__(self, stats):
        super().__init__(daemon=True)
        self.stats = stats
        self.lock = threading.Lock()
        self.socks = {}            # socket -> (close at, opened at, kind, target)
        self.selector = selectors.DefaultSelector()
        self.done = threading.Event()

    def hold(self, s, seconds, kind, target):
        deadline = time.monotonic() + 10
        while len(self.socks) >= self.MAX and not self.stats.stop and time.monotonic() < deadline:
            time.sleep(0.05)
        now = time.monotonic()
        with self.lock:
            if len(self.socks) >= self.MAX:
                s.close()
                self.stats.add(kind, target, outcome="closed at once (the holder was full)")
                return
            self.socks[s] = (now + seconds, now, kind, target)
            self.selector.register(s, selectors.EVENT_READ)

    def finish(self, s, outcome):
        with self.lock:
            _, _, kind, target = self.socks.pop(s)
            self.selector.unregister(s)
        s.close()
        self.stats.add(kind, target, outcome=outcome)

    def run(self):
        while True:
            try:
                if not self.socks:
                    if self.done.is_set():
                        return
                    time.sleep(0.1)
                    continue
                with self.lock:
                    events = self.selector.select(timeout=0)
                if not events:
                    time.sleep(0.1)
                now = time.monotonic()
                for key, _ in events:
                    s = key.fileobj
                    if s not in self.socks:
                        continue
                    try:
                        chunk = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        age = now - self.socks[s][1]
                        self.finish(s, "closed by the peer " +
                                    ("within 1 s" if age < 1 else "in 1-10 s" if age < 10 else "after 10 s"))
                for s in list(self.socks):
                    if now >= self.socks[s][0] or self.done.is_set():
                        self.finish(s, "held open to the end")
            except Exception as e:          # never die: the workers wait on this thread
                print(f"netfuzz_tool: holder: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                time.sleep(0.1)


class Runner:
    def __init__(self, args, corpus, stats, export):
        self.args = args
        self.corpus = corpus
        self.stats = stats
        self.export = export
        self.flood_lock = threading.Lock()
        self.holder = Holder(stats)
        self.holder.start()
        self.blob_inode = None
        self.last_flood = -1e9
        self.servers = [parse_addr(a) for a in args.server]
        self.server = self.servers[0]

    def follow_server(self):
        """The export moved (a failover): fuzz the address that welcomes a hello now."""
        for addr in self.servers:
            if probe_server(addr, self.export, timeout=2) is not None:
                if addr != self.server:
                    self.server = addr
                return

    FLOOD_GAP = 5.0

    # Each kind: returns a dict of what happened (for the job log).
    def run(self, job):
        kind, (tname, addr) = job.kind, job.target
        if tname == "server":
            addr = self.server
        self.stats.add(kind, tname)
        try:
            result = getattr(self, "k_" + kind.replace("-", "_"))(job, tname, addr)
        except ConnectionRefusedError as e:
            self.stats.add(kind, tname, error=type(e).__name__)
            result = {"error": f"{type(e).__name__}: {e}"}
            if tname == "server":
                self.follow_server()
        except OSError as e:
            self.stats.add(kind, tname, error=type(e).__name__)
            result = {"error": f"{type(e).__name__}: {e}"}
        self.stats.job_done(kind, tname)
        return result

    def one(self, job, tname, addr, data, read_s=0.5, before=None, close="normal", sanitize_it=True):
        """One connection: connect, optional BEFORE step, send DATA, read the answer."""
        kind = job.kind
        if tname == "server" and sanitize_it:
            data, n = sanitize(data)
            if n:
                with self.stats.lock:
                    self.stats.sanitized += n
        s = connect(addr)
        total = 0
        try:
            prefix = b""
            if before:
                total, prefix = before(s)
            sent, how = send_counted(s, data, time.monotonic() + 5)
            total += sent
            answer, ended = read_answer(s, read_s) if how == "ok" else (b"", how)
            outcome = outcome_of(prefix + answer, ended)
        finally:
            if close == "reset":
                hard_close(s)
            else:
                s.close()
        self.stats.add(kind, tname, connections=1, sent=total, outcome=outcome)
        return {"sent": total, "outcome": outcome}

    def k_random(self, job, tname, addr):
        rng = job.rng
        data = rng.randbytes(rng.choice([1, 2, 3, 4, 7, 16, 100, 1000, rng.randint(1, 65536), rng.randint(1, 1 << 21)]))
        if rng.random() < 0.3:                     # a length prefix that fits, so the decoder sees the bytes
            data = frame(data[:MAX_FRAME])
        return self.one(job, tname, addr, data, close=rng.choice(["normal", "normal", "reset"]))

    def k_mutated(self, job, tname, addr):
        rng = job.rng
        data = mutated_frames(rng, self.corpus, rng.choice([1, 1, 1, 2, 3, 8]))
        return self.one(job, tname, addr, data, close=rng.choice(["normal", "normal", "reset"]))

    def k_hello_garbage(self, job, tname, addr):
        rng = job.rng
        data = garbage(rng, self.corpus)
        if tname == "server":
            hi = hello(self.export, (1 << 63) | rng.randrange(1 << 63))

            def before(s):
                s.sendall(hi)
                got, _ = read_answer(s, 3, limit=13)        # the welcome: 4 + 1 + 8 bytes
                return len(hi), got
        else:
            # An agent speaks first (a challenge); the garbage may begin with a wrong proof.
            if rng.random() < 0.5:
                data = frame(bytes([TAG_AUTHENTICATE]) + string(rng.choice(["a", "b", "c", ""])) +
                             u32(32) + rng.randbytes(32)) + data

            def before(s):
                got, _ = read_answer(s, 3, limit=4 + 1 + 4 + 32)
                return 0, got
        return self.one(job, tname, addr, data, before=before)

    def k_huge_length(self, job, tname, addr):
        rng = job.rng
        n = rng.choice([MAX_FRAME + 1, MAX_FRAME + rng.randint(2, 1 << 20), 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE,
                        0xFFFFFFFF, rng.randrange(MAX_FRAME + 1, 1 << 32)])
        data = u32(n) + rng.randbytes(rng.choice([0, 1, 16, 4096, 65536]))
        if rng.random() < 0.3 and tname == "server":   # after a hello: as a client
            hi = hello(self.export, (1 << 63) | rng.randrange(1 << 63))
            data = hi + data
        return self.one(job, tname, addr, data, read_s=1.0)

    def k_half_open(self, job, tname, addr):
        """1-8 connections, each with a partial frame, then silent for 2-15 s
        (the holder thread keeps them and notes when the peer closes one).
        Some declare a whole MAX_FRAME (the receiver may reserve room for it)."""
        rng = job.rng
        hold = rng.uniform(2, 15)
        total, opened = 0, 0
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.25:
                data = u32(rng.randrange(1, MAX_FRAME + 1))[:rng.randint(1, 3)]      # part of a prefix
            elif r < 0.5:
                data = u32(MAX_FRAME) + rng.randbytes(rng.randint(0, 1024))           # the largest frame, begun
            elif r < 0.75:
                body = rng.choice(self.corpus.bodies)
                data = frame(body)[:rng.randint(1, 4 + len(body) - 1)]
            else:
                data = (hello(self.export, (1 << 63) | rng.randrange(1 << 63)) if tname == "server" else b"") + \
                       u32(rng.randrange(64, 1 << 16)) + rng.randbytes(rng.randint(0, 32))
            if tname == "server":
                data, _ = sanitize(data)
            try:
                s = connect(addr)
            except OSError as e:
                self.stats.add(job.kind, tname, error=type(e).__name__)
                continue
            sent, _ = send_counted(s, data, time.monotonic() + 3)
            total += sent
            opened += 1
            self.holder.hold(s, hold, job.kind, tname)
        self.stats.add(job.kind, tname, connections=opened, sent=total)
        return {"sent": total, "connections": opened, "hold_s": round(hold, 1)}

    def k_no_read(self, job, tname, addr):
        """Backpressure: a welcomed client that sends requests at a steady pace
        (32 every 20 ms) and never reads the replies, for 2-5 s: reads of
        1 MiB of the blob file (whole replies), reads past its end (empty
        replies), readdirs, getattrs. The server should stop reading it (a
        send then stalls) rather than queue its replies without bound."""
        return self.unread_client(job, tname, addr, batch=32, pause=0.02)

    def k_pipeline(self, job, tname, addr):
        """Not among the default kinds: the same client without the pace,
        256 requests a batch as fast as the socket takes them (a few such
        clients failed a healthy server over until the monitor had a port
        and a thread of its own: see README "Network fuzzing")."""
        return self.unread_client(job, tname, addr, batch=256, pause=0)

    def unread_client(self, job, tname, addr, batch, pause):
        rng = job.rng
        mode = rng.choice(["read", "read-past-end", "readdir", "getattr"])
        seconds = rng.uniform(2, 5)
        ino = self.blob(addr) or ROOT_INODE
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(3)
        s.connect(addr)
        seq = 1
        hi = hello(self.export, (1 << 63) | rng.randrange(1 << 63))
        total, how = send_counted(s, hi, time.monotonic() + 3)
        deadline = time.monotonic() + seconds
        budget = 64 << 20                                   # bytes of requests at most
        while time.monotonic() < deadline and how == "ok" and total < budget and not self.stats.stop:
            data = b""
            for _ in range(batch):
                if mode == "read":
                    op = op_read(ino, rng.randrange(0, 4 << 20), 1 << 20)
                elif mode == "read-past-end":
                    op = op_read(ino, (1 << 40) + rng.randrange(1 << 20), 1 << 20)
                elif mode == "readdir":
                    op = op_readdir(ROOT_INODE, 0, 1 << 20)
                else:
                    op = op_getattr(ROOT_INODE)
                data += request(seq, op)
                seq += 1
            sent, how = send_counted(s, data, deadline)
            total += sent
            if pause:
                time.sleep(pause)
        # The server stops reading a client that does not read: a send then stalls.
        hard_close(s)
        outcome = {"ok": "sent all", "stalled": "server stopped reading", "reset": "reset"}[how]
        self.stats.add(job.kind, tname, connections=1, sent=total, outcome=f"{mode}: {outcome}")
        return {"sent": total, "outcome": f"{mode}: {outcome}", "requests": seq - 1}

    def blob(self, addr):
        """The inode of the file named by --blob (looked up once, as a client)."""
        if self.blob_inode is None:
            self.blob_inode = lookup_path(addr, self.export, self.args.blob) if self.args.blob else 0
        return self.blob_inode

    def k_flood(self, job, tname, addr):
        """100-400 connections at once (one flood in four: 900-1200, past a
        soft limit of 1024 open files; at most 10 s of connecting), held 1-3 s: silent ones, ones that say
        hello (or wait for the agent's challenge), ones that begin the largest
        frame; then all closed (some with a reset)."""
        rng = job.rng
        count = rng.randint(900, 1200) if rng.random() < 0.25 else rng.randint(100, 400)
        style = rng.choice(["silent", "hello", "mixed", "big-prefix"])
        socks, total, errors = [], 0, collections.Counter()
        if time.monotonic() - self.last_flood < self.FLOOD_GAP or not self.flood_lock.acquire(blocking=False):
            # One flood at a time, FLOOD_GAP s apart; the job is logged as skipped.
            self.stats.add(job.kind, tname, outcome="skipped (a flood ran less than 5 s ago)")
            return {"outcome": "skipped: a flood ran less than 5 s ago"}
        try:
            # Connecting stops after 10 s or 3 failures in a row (a peer at its
            # limit of open files accepts nothing: each connect would wait 1 s).
            give_up, failed_in_a_row = time.monotonic() + 10, 0
            for i in range(count):
                if self.stats.stop or time.monotonic() > give_up or failed_in_a_row >= 3:
                    break
                try:
                    s = connect(addr, timeout=1)
                    failed_in_a_row = 0
                except OSError as e:
                    errors[type(e).__name__] += 1
                    failed_in_a_row += 1
                    continue
                pick = style if style != "mixed" else rng.choice(["silent", "hello", "big-prefix"])
                data = b""
                if pick == "hello" and tname == "server":
                    data = hello(self.export, (1 << 63) | rng.randrange(1 << 63))
                elif pick == "big-prefix":
                    data = u32(MAX_FRAME) + b"\x01"
                if data:
                    sent, _ = send_counted(s, data, time.monotonic() + 1)
                    total += sent
                socks.append(s)
            time.sleep(rng.uniform(1, 3))
            closed = 0
            for s in socks:
                try:
                    s.setblocking(False)
                    if s.recv(1 << 16) == b"":
                        closed += 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    closed += 1
                if rng.random() < 0.3:
                    hard_close(s)
                else:
                    s.close()
        finally:
            self.last_flood = time.monotonic()
            self.flood_lock.release()
        outcome = f"{style}: {closed} of {len(socks)} closed by the peer"
        self.stats.add(job.kind, tname, connections=len(socks), sent=total, outcome=f"{style}")
        for e, n in errors.items():
            for _ in range(n):
                self.stats.add(job.kind, tname, error=e)
        return {"sent": total, "outcome": outcome, "connect_errors": dict(errors)}

    def k_udp(self, job, tname, addr):
        """A burst of 20-300 datagrams to an agent's heartbeat socket: random
        bytes of 0-600 bytes (over the 512 limit too), and datagrams shaped like
        a heartbeat or probe (tag, node name, u64s) with a wrong HMAC."""
        rng = job.rng
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        n = rng.randint(20, 300)
        total = sent = 0
        try:
            for i in range(n):
                r = rng.random()
                if r < 0.4:
                    d = rng.randbytes(rng.choice([0, 1, 32, 33, 100, 511, 512, 513, 600, rng.randint(0, 600)]))
                else:
                    body = bytes([rng.choice([1, 2, 3, rng.randrange(256)])]) + string(rng.choice(["a", "b", "", "zz"])) + \
                        u64(rng.randrange(1 << 64)) + (u64(rng.randrange(1 << 64)) if rng.random() < 0.7 else b"")
                    d = body + rng.randbytes(rng.choice([DIGEST, DIGEST - 1, 0, DIGEST + 1]))
                try:
                    s.sendto(d, addr)
                    sent += 1
                    total += len(d)
                except OSError:
                    pass
                if i % 10 == 9:
                    time.sleep(0.01)        # about 1,000 datagrams a second a job at most
        finally:
            s.close()
        self.stats.add(job.kind, tname, sent=total, datagrams=sent, outcome="sent")
        return {"sent": total, "datagrams": sent}


# --- the watcher: do the processes still answer? -------------------------------------


def proc_info(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        state, start = fields[0], int(fields[19])
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return {"state": state, "start": start, "rss": rss, "fds": fds}
    except (OSError, IndexError, ValueError):
        return None


def probe_server(addr, export, timeout=5.0):
    """A client's hello: seconds until the welcome, or None. Tried 3 times
    (a flood may close a connection before its hello is read: by design)."""
    t0 = time.monotonic()
    for _ in range(3):
        seconds = first_answer(addr, hello(export, (1 << 62) | random.getrandbits(62)), TAG_WELCOME, 13,
                               max(0.1, timeout - (time.monotonic() - t0)), t0)
        if seconds is not None:
            return seconds
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(0.1)
    return None


def probe_agent(addr, timeout=5.0):
    """Seconds until an agent's challenge, or None."""
    return first_answer(addr, b"", TAG_CHALLENGE, 4 + 1 + 4 + 32, timeout, time.monotonic())


def first_answer(addr, send, tag, limit, timeout, t0):
    """Connects, sends `send`, reads up to `limit` bytes: seconds since `t0`
    if a frame with `tag` came, else None (also when the connection failed)."""
    try:
        s = connect(addr, timeout=timeout)
        try:
            if send:
                s.sendall(send)
            got, _ = read_answer(s, timeout, limit=limit)
        finally:
            s.close()
        if any(t == tag for t, _ in parse_frames(got)):
            return time.monotonic() - t0
    except OSError:
        pass
    return None


class Watcher(threading.Thread):
    """Every second: each process alive and the same (pid, start time), its
    RSS and open fds; the export server welcomes a hello and each agent sends
    its challenge within 5 s. Anything else is an event, logged with the jobs
    that were running."""

    def __init__(self, args, inflight, events, runner):
        super().__init__(daemon=True)
        self.args = args
        self.runner = runner
        self.inflight = inflight
        self.events = events
        self.watch = {}
        for w in args.watch or []:
            name, _, pid = w.partition("=")
            self.watch[name] = int(pid)
        self.first = {n: proc_info(p) for n, p in self.watch.items()}
        self.procs = {n: {"pid": p, "start": (self.first[n] or {}).get("start"), "alive": self.first[n] is not None,
                          "rss_start": (self.first[n] or {}).get("rss", 0), "rss_peak": 0,
                          "fds_start": (self.first[n] or {}).get("fds", 0), "fds_peak": 0, "rss_end": 0, "fds_end": 0}
                      for n, p in self.watch.items()}
        self.probes = {t: {"ok": 0, "missed": 0, "slowest_s": 0.0} for t in ["server", "agent-a", "agent-b"]}
        self.done = threading.Event()

    def event(self, text):
        running = self.inflight.snapshot()
        self.events.write(f"{time.strftime('%T')} {text}; jobs running: {running}\n")
        self.events.flush()

    def sample(self):
        for name, p in self.procs.items():
            info = proc_info(p["pid"])
            if info is None or info["start"] != p["start"] or info["state"] in "ZX":
                if p["alive"]:
                    p["alive"] = False
                    self.event(f"PROCESS GONE: {name} pid {p['pid']}")
                continue
            p["rss_peak"] = max(p["rss_peak"], info["rss"])
            p["fds_peak"] = max(p["fds_peak"], info["fds"])
            p["rss_end"], p["fds_end"] = info["rss"], info["fds"]
        a = self.args
        checks = [("server", self.probe_export),
                  ("agent-a", lambda: probe_agent(parse_addr(a.agent[0]))),
                  ("agent-b", lambda: probe_agent(parse_addr(a.agent[1])))]
        for name, fn in checks:
            dt = fn()
            pr = self.probes[name]
            if dt is None:
                pr["missed"] += 1
                self.event(f"NO ANSWER: {name} did not answer within 5 s")
            else:
                pr["ok"] += 1
                pr["slowest_s"] = max(pr["slowest_s"], round(dt, 3))
                if dt > 2:
                    self.event(f"slow answer: {name} took {dt:.2f} s")

    def probe_export(self):
        """The export's server at the address jobs use; if it does not answer,
        at any other (a failover moved it: the jobs follow)."""
        dt = probe_server(self.runner.server, self.args.export)
        if dt is None:
            self.runner.follow_server()
            dt = probe_server(self.runner.server, self.args.export)
        return dt

    def run(self):
        while not self.done.wait(1.0):
            self.sample()
        self.sample()


class Inflight:
    def __init__(self):
        self.lock = threading.Lock()
        self.jobs = {}
        self.recent = collections.deque(maxlen=20)

    def begin(self, job):
        with self.lock:
            self.jobs[job.index] = (job.kind, job.target[0], time.monotonic())

    def end(self, job):
        with self.lock:
            self.jobs.pop(job.index, None)
            self.recent.append(job.index)

    def snapshot(self):
        with self.lock:
            now = time.monotonic()
            return [f"#{i} {k}->{t} {now - t0:.1f}s" for i, (k, t, t0) in sorted(self.jobs.items())] + \
                [f"recently done: {list(self.recent)[-10:]}"]


def targets_of(args):
    return {"server": parse_addr(args.server[0]),
            "agents": [parse_addr(a) for a in args.agent],
            "udp": [(f"udp-{n}", parse_addr(u)) for n, u in zip(["a", "b"], args.udp)]}


def kinds_of(args):
    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    for k in kinds:
        if k not in KINDS + EXTRA_KINDS:
            raise SystemExit(f"netfuzz_tool: unknown kind {k} (known: {','.join(KINDS + EXTRA_KINDS)})")
    return kinds


def fuzz(args):
    corpus = Corpus(args.corpus)
    stats = Stats()
    kinds = kinds_of(args)
    targets = targets_of(args)
    runner = Runner(args, corpus, stats, args.export)
    inflight = Inflight()
    events = open(args.events, "a", buffering=1)
    joblog = open(args.log, "w", buffering=1)
    watcher = Watcher(args, inflight, events, runner)
    watcher.start()
    counter = iter(range(1 << 62))
    counter_lock = threading.Lock()
    t0 = time.monotonic()
    end = t0 + args.seconds

    def stopping():
        return time.monotonic() >= end or (args.stop_file and os.path.exists(args.stop_file))

    def worker():
        while not stopping() and not stats.stop:
            with counter_lock:
                index = next(counter)
            job = Job(args.seed, index, corpus, kinds, targets)
            inflight.begin(job)
            start = time.monotonic()
            result = runner.run(job)
            inflight.end(job)
            rec = dict(job.describe(), t=round(start - t0, 2), s=round(time.monotonic() - start, 3), **result)
            joblog.write(json.dumps(rec) + "\n")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    last_save = time.monotonic()

    def save(final=False):
        with stats.lock:
            out = {"seed": args.seed, "seconds": round(time.monotonic() - t0, 1), "concurrency": args.concurrency,
                   "kinds": {k: dict(v, targets=dict(v["targets"]), outcomes=dict(v["outcomes"]))
                             for k, v in stats.kinds.items()},
                   "sanitized_frames": stats.sanitized, "jobs": sum(v["jobs"] for v in stats.kinds.values()),
                   "processes": watcher.procs, "probes": watcher.probes, "final": final}
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.out)

    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if stopping():
                stats.stop = True
            if time.monotonic() - last_save > 5:
                save()
                last_save = time.monotonic()
    except KeyboardInterrupt:
        stats.stop = True
    for t in threads:
        t.join(timeout=20)
    runner.holder.done.set()
    runner.holder.join(timeout=5)
    watcher.done.set()
    watcher.join(timeout=30)
    save(final=True)
    return 0


def replay(args):
    corpus = Corpus(args.corpus)
    stats = Stats()
    runner = Runner(args, corpus, stats, args.export)
    for index in args.job:
        job = Job(args.seed, index, corpus, kinds_of(args), targets_of(args))
        print(json.dumps(dict(job.describe(), **runner.run(job))))
    return 0


def show_jobs(args):
    """What jobs send, without a network: kind, target and the first bytes."""
    corpus = Corpus(args.corpus)
    targets = {"server": ("127.0.0.1", 1), "agents": [("127.0.0.1", 2), ("127.0.0.2", 3)],
               "udp": [("udp-a", ("127.0.0.1", 2)), ("udp-b", ("127.0.0.2", 3))]}
    for index in range(args.first, args.first + args.count):
        job = Job(args.seed, index, corpus, kinds_of(args), targets)
        rng = job.rng
        state = rng.getstate()
        preview = ""
        if job.kind in ("random", "mutated"):
            data = (rng.randbytes(rng.choice([1, 2, 3, 4, 7, 16, 100, 1000, rng.randint(1, 65536),
                                              rng.randint(1, 1 << 21)])) if job.kind == "random"
                    else mutated_frames(rng, corpus, rng.choice([1, 1, 1, 2, 3, 8])))
            preview = data[:48].hex() + ("..." if len(data) > 48 else "") + f" ({len(data)} bytes)"
        rng.setstate(state)
        print(f"#{index} {job.kind} -> {job.target[0]} {preview}")
    return 0


# --- the report -------------------------------------------------------------------------


def human(n):
    for unit in ["B", "KiB", "MiB", "GiB"]:
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def report(results):
    try:
        st = json.load(open(os.path.join(results, "fuzz.json")))
    except (OSError, ValueError):
        st = {"seed": "?", "seconds": 0, "concurrency": "?", "jobs": 0, "kinds": {}, "processes": {}, "probes": {},
              "final": False}
    checks = json.load(open(os.path.join(results, "checks.json")))
    env = {}
    for line in open(os.path.join(results, "run.env")):
        k, _, v = line.rstrip("\n").partition("=")
        env[k] = v
    rounds = [l.rstrip("\n").split("\t") for l in open(os.path.join(results, "fio-rounds.tsv"))][1:]
    meta = {}
    try:
        meta = json.load(open(os.path.join(results, "meta.json")))["stats"]
    except (OSError, ValueError, KeyError):
        pass
    lines = []
    add = lines.append
    add(f"{'duration':<34} {checks.get('duration_s', st['seconds'])} s (fuzzing {st['seconds']} s), seed {st['seed']}, "
        f"{st['concurrency']} at a time")
    add(f"{'jobs':<34} {st['jobs']}")
    add("")
    add(f"  {'kind':<15} {'jobs':>7} {'connections':>11} {'datagrams':>9} {'bytes sent':>11}  outcomes (most frequent)")
    tot_c = tot_b = tot_d = 0
    for k in KINDS + EXTRA_KINDS:
        v = st["kinds"].get(k)
        if not v:
            continue
        tot_c += v["connections"]
        tot_b += v["bytes"]
        tot_d += v["datagrams"]
        top = sorted(v["outcomes"].items(), key=lambda kv: -kv[1])[:3]
        add(f"  {k:<15} {v['jobs']:>7} {v['connections']:>11} {v['datagrams']:>9} {human(v['bytes']):>11}  "
            + ", ".join(f"{o} {n}" for o, n in top))
    add(f"  {'total':<15} {st['jobs']:>7} {tot_c:>11} {tot_d:>9} {human(tot_b):>11}")
    add("")
    ok = sum(1 for r in rounds if r[2] == "ok")
    stopped = sum(1 for r in rounds if r[2] == "stopped")
    failed = len(rounds) - ok - stopped
    verified = sum(int(r[5]) for r in rounds if len(r) > 5 and r[2] == "ok" and r[5].isdigit())
    add(f"{'fio rounds (64 MiB, crc32c)':<34} {ok} ok, {failed} failed" + (f", {stopped} stopped at the end" if stopped else "")
        + f"; {human(verified)} verified")
    add(f"{'metadata operations':<34} {meta.get('ops', '?')}, errors {meta.get('errors', '?')}, "
        f"manifest mismatches {meta.get('mismatches', '?')}")
    add(f"{'failovers (epoch start -> end)':<34} {checks['failovers']} ({checks['epoch_start']} -> {checks['epoch_end']})")
    add(f"{'process restarts':<34} {checks['restarts']}" + (f" ({'; '.join(checks['restart_list'])})" if checks['restart_list'] else ""))
    for name, p in st["processes"].items():
        if not p["rss_peak"]:
            add(f"  {name:<32} pid {p['pid']}, GONE before the first sample (1 s); RSS {human(p['rss_start'])}, "
                f"fds {p['fds_start']} at the start")
            continue
        add(f"  {name:<32} pid {p['pid']}, {'alive' if p['alive'] else 'GONE'}, RSS {human(p['rss_start'])} -> "
            f"peak {human(p['rss_peak'])}, end {human(p['rss_end'])}; fds {p['fds_start']} -> peak {p['fds_peak']}, end {p['fds_end']}")
    misses = sum(p["missed"] for p in st["probes"].values())
    add(f"{'answers to hello / challenge':<34} " + ", ".join(
        f"{n} {p['ok']} ok {p['missed']} missed (slowest {p['slowest_s']} s)" for n, p in st["probes"].items()))
    add(f"{'log written (refusals are logged)':<34} {checks.get('log_sizes', '?')}")
    add(f"{'baton status answers':<34} {checks['status_ok']} of {checks['status_checks']} checks")
    add(f"{'mount works':<34} {checks['mount_ok']} of {checks['mount_checks']} checks")
    problems = list(checks.get("problems", []))
    if failed:
        problems.append(f"{failed} fio rounds failed")
    if meta.get("errors") or meta.get("mismatches"):
        problems.append("metadata errors or mismatches")
    if misses:
        problems.append(f"{misses} probes unanswered")
    if not meta:
        problems.append("no metadata statistics")
    if not st.get("final"):
        problems.append("the fuzzer did not finish")
    verdict = "PASS" if not problems else "FAIL: " + "; ".join(problems)
    add(f"{'verdict':<34} {verdict}")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(results, "summary.txt"), "w") as f:
        f.write(text + "\n")
    return 0 if not problems else 1


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd = sys.argv[1]
    if cmd == "report":
        sys.exit(report(sys.argv[2]))
    p = argparse.ArgumentParser(prog="netfuzz_tool.py " + cmd)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--corpus", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Fuzz", "corpus", "message"))
    p.add_argument("--kinds", default="")
    if cmd == "jobs":
        p.add_argument("--first", type=int, default=0)
        p.add_argument("--count", type=int, default=20)
        sys.exit(show_jobs(p.parse_args(sys.argv[2:])))
    p.add_argument("--server", action="append", required=True, help="the export's address on each node (the first is tried first)")
    p.add_argument("--agent", action="append", required=True)
    p.add_argument("--udp", action="append", required=True)
    p.add_argument("--export", default="demo")
    p.add_argument("--blob", default="netfuzz/blob", help="a file of the export (path in it) that no-read jobs read")
    if cmd == "replay":
        p.add_argument("--job", type=int, action="append", required=True)
        sys.exit(replay(p.parse_args(sys.argv[2:])))
    if cmd != "fuzz":
        sys.exit(__doc__)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--stop-file", default="")
    p.add_argument("--watch", action="append")
    p.add_argument("--out", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--events", required=True)
    a = p.parse_args(sys.argv[2:])
    if len(a.agent) != 2 or len(a.udp) != 2:
        sys.exit("netfuzz_tool: give --agent and --udp twice (nodes a and b)")
    sys.exit(fuzz(a))


if __name__ == "__main__":
    main()
