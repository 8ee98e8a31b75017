#!/usr/bin/env python3
"""Helpers of mountscripts/soak (see its header and README.md "Soak").

  soak_tool.py meta DIR STATE_DIR      the metadata workload (until SIGTERM or STATE_DIR/stop)
  soak_tool.py check DIR MANIFEST      checks DIR against a manifest; prints one JSON line
  soak_tool.py watch WORK EXPORT OUT   the split-brain watcher (until SIGTERM)
  soak_tool.py report WORK RESULTS     the summary table (exit 1 on errors, lost writes, split brain)
"""
import errno
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

stopping = False


def on_term(*_):
    global stopping
    stopping = True


def now():
    return time.time()


# --- the metadata workload -----------------------------------------------------
# Create (write random bytes, fsync, close), rename and unlink small files in
# DIR. Only an operation that returned is recorded in the manifest (name ->
# sha256), so the manifest is what the file system acknowledged. Every 30 s,
# and at the end, DIR is compared with it: a file missing or with other bytes
# is a lost write, a file present that the manifest does not hold (unlinked or
# renamed away) is an unexpected file; both are "manifest mismatches". An
# operation that fails is an error, except ENOSPC while STATE_DIR/diskfull
# exists or for 10 s after it was removed (a full disk refuses by design).
# Its names are then re-read (stat) so the manifest follows what happened.

def sha(data):
    return hashlib.sha256(data).hexdigest()


def check_dir(d, manifest, uncertain=()):
    present = {n for n in os.listdir(d) if not n.startswith(".")}
    missing, differ, unexpected = [], [], []
    for name, digest in manifest.items():
        if name not in present:
            missing.append(name)
            continue
        with open(os.path.join(d, name), "rb") as f:
            if sha(f.read()) != digest:
                differ.append(name)
    for name in sorted(present - set(manifest) - set(uncertain)):
        unexpected.append(name)
    return {"files": len(manifest), "missing": missing, "differ": differ, "unexpected": unexpected}


def meta(d, state):
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    os.makedirs(d, exist_ok=True)
    rng = random.Random(int(os.environ.get("SOAK_SEED", "1")) ^ 0x5EED)
    manifest, uncertain = {}, set()
    stats = {"ops": 0, "errors": 0, "enospc_refused": 0, "longest_op_s": 0.0, "longest_op": "",
             "checks": 0, "mismatches": 0, "error_list": [], "mismatch_list": []}
    counter = 0
    last_check = now()
    events = open(os.path.join(state, "meta-events.log"), "a", buffering=1)

    def diskfull_recent():
        flag = os.path.join(state, "diskfull")
        if os.path.exists(flag):
            return True
        try:
            return now() - os.path.getmtime(os.path.join(state, "diskfull.freed")) < 10
        except OSError:
            return False

    def exists(name):
        try:
            os.stat(os.path.join(d, name))
            return True
        except OSError:
            return False

    def save():
        tmp = os.path.join(state, "meta.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"stats": stats, "manifest": manifest, "uncertain": sorted(uncertain)}, f)
        os.replace(tmp, os.path.join(state, "meta.json"))

    def check(when):
        stats["checks"] += 1
        try:
            r = check_dir(d, manifest, uncertain)
        except OSError as e:
            stats["errors"] += 1
            stats["error_list"].append(f"{time.strftime('%T')} check: {e}")
            events.write(f"{time.strftime('%T')} check error {e}\n")
            return
        bad = len(r["missing"]) + len(r["differ"]) + len(r["unexpected"])
        if bad:
            stats["mismatches"] += bad
            stats["mismatch_list"].append({"at": time.strftime('%T'), "when": when, **r})
        events.write(f"{time.strftime('%T')} check ({when}): {r['files']} files, missing {r['missing'][:5]}, "
                     f"differ {r['differ'][:5]}, unexpected {r['unexpected'][:5]}\n")
        # A mismatch is reported once: follow what is there from now on.
        for n in r["missing"]:
            manifest.pop(n, None)
        for n in r["differ"]:
            with open(os.path.join(d, n), "rb") as f:
                manifest[n] = sha(f.read())

    while not stopping and not os.path.exists(os.path.join(state, "stop")):
        counter += 1
        names = sorted(manifest)
        r = rng.random()
        if len(names) < 20 or (r < 0.6 and len(names) < 400):
            op, name = "create", f"f-{counter:07d}"
            data = rng.randbytes(rng.randint(1, 16384))
        elif r < 0.8:
            op, name = "rename", rng.choice(names)
            new = f"r-{counter:07d}"
        else:
            op, name = "unlink", rng.choice(names)
        path = os.path.join(d, name)
        t0 = now()
        try:
            if op == "create":
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                manifest[name] = sha(data)
            elif op == "rename":
                os.rename(path, os.path.join(d, new))
                manifest[new] = manifest.pop(name)
            else:
                os.unlink(path)
                del manifest[name]
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT) and diskfull_recent()
            key = "enospc_refused" if full else "errors"
            stats[key] += 1
            if not full:
                stats["error_list"].append(f"{time.strftime('%T')} {op} {name}: {e}")
            events.write(f"{time.strftime('%T')} {op} {name} failed ({'refused: disk full' if full else 'ERROR'}): {e}\n")
            # Follow what happened, as far as the file system now says.
            try:
                if op == "create":
                    if exists(name):
                        try:
                            os.unlink(path)
                        except OSError:
                            uncertain.add(name)
                elif op == "rename":
                    if not exists(name) and exists(new):
                        manifest[new] = manifest.pop(name)
                else:
                    if not exists(name):
                        manifest.pop(name, None)
            except OSError:
                uncertain.add(name)
        dt = now() - t0
        stats["ops"] += 1
        if dt > stats["longest_op_s"]:
            stats["longest_op_s"] = dt
            stats["longest_op"] = f"{op} at {time.strftime('%T', time.localtime(t0))}"
        if now() - last_check > 30:
            check("periodic")
            last_check = now()
            save()
    check("end")
    save()


def check_main(d, manifest_path):
    m = json.load(open(manifest_path))
    r = check_dir(d, m["manifest"], m.get("uncertain", []))
    print(json.dumps(r))


# --- the split-brain watcher ------------------------------------------------------
# Every 200 ms, for each node N (data directory WORK/N): the `baton serve`
# processes of the export with --data WORK/N/..., each with
#   running   its state is not T (stopped), t or Z
#   owner     it holds the export's data directory: an open fd on DIR/lock
#             (a server started with --await-promotion opens the directory
#             only at its go-ahead, so a waiting next server is not an owner)
#   listening it has a TCP socket in LISTEN state (its client port)
#   epoch     DIR/epoch of that directory
# A node "could accept writes" when one of its servers is running, owner and
# listening. A split-brain moment is a sample in which both nodes could; it is
# printed with both pids and epochs. Separately (for information, every 1 s)
# each agent is asked `baton status --agent` from its own namespace: samples in
# which both agents answer role=server for the export are counted as
# "both agents claim the export".

def proc_state(pid):
    try:
        s = open(f"/proc/{pid}/stat").read()
        return s[s.rindex(")") + 2:].split()[0]
    except (OSError, ValueError, IndexError):
        return None


def listening_inodes(pid):
    inodes = set()
    for fn in ("tcp", "tcp6"):
        try:
            for line in open(f"/proc/{pid}/net/{fn}").read().splitlines()[1:]:
                f = line.split()
                if len(f) > 9 and f[3] == "0A":
                    inodes.add(f[9])
        except OSError:
            pass
    return inodes


def servers_of(work, export):
    out = {"a": [], "b": []}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if len(argv) < 2 or not os.path.basename(argv[0]).startswith("baton") or argv[1] != "serve":
            continue
        try:
            data = argv[argv.index("--data") + 1]
        except (ValueError, IndexError):
            continue
        for node in ("a", "b"):
            if not data.startswith(f"{work}/{node}/"):
                continue
            state = proc_state(p)
            owner, sockets = False, set()
            try:
                for fd in os.listdir(f"/proc/{p}/fd"):
                    try:
                        target = os.readlink(f"/proc/{p}/fd/{fd}")
                    except OSError:
                        continue
                    if target == f"{data}/lock":
                        owner = True
                    elif target.startswith("socket:["):
                        sockets.add(target[8:-1])
            except OSError:
                continue
            listening = bool(sockets & listening_inodes(p))
            try:
                epoch = int(open(f"{data}/epoch").read().strip())
            except (OSError, ValueError):
                epoch = None
            out[node].append({"pid": int(p), "state": state, "owner": owner, "listening": listening,
                              "epoch": epoch, "await": "--await-promotion" in argv})
    return out


def still_could(pid, work, node):
    """The server `pid` of `node` is still running and still holds its data directory."""
    if proc_state(pid) in (None, "T", "t", "Z", "X"):
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{work}/{node}/") and target.endswith("/lock"):
            return True
    return False


def agent_roles(baton, config_dir, export, addrs):
    """{node: role or None} from each agent, asked in its own namespace on each path."""
    procs = {}
    for node, (ns, hosts) in addrs.items():
        cmd = "; ".join(f"timeout 0.8 nsenter --net=/run/netns/{ns} {baton} status --agent {h} "
                        f"--secret-file {config_dir}/secret --json 2>/dev/null; [ $? -le 2 ] && exit 0" for h in hosts) + "; exit 1"
        procs[node] = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    roles = {}
    for node, p in procs.items():
        out, _ = p.communicate()
        roles[node] = None
        try:
            for e in json.loads(out).get("exports", []):
                if e.get("name") == export:
                    roles[node] = (e.get("role"), e.get("epoch"))
        except (ValueError, AttributeError):
            pass
    return roles


def watch(work, export, out_path):
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    baton = os.environ["SOAK_BATON_REAL"]
    prefix = os.environ.get("BATON_TESTBED_PREFIX", "baton-")
    addrs = {"a": (f"{prefix}node-a", json.loads(os.environ["SOAK_AGENT_A"])),
             "b": (f"{prefix}node-b", json.loads(os.environ["SOAK_AGENT_B"]))}
    stats = {"samples": 0, "split_brain": 0, "moments": [], "agent_samples": 0, "agents_both_claim": 0,
             "agent_claims": [], "longest_gap_ms": 0}
    log = open(out_path + ".log", "a", buffering=1)
    last_agents = 0.0
    agent_thread = None

    def ask_agents():
        roles = agent_roles(baton, work, export, addrs)
        with lock:
            stats["agent_samples"] += 1
            if all(r and r[0] == "server" for r in roles.values()):
                stats["agents_both_claim"] += 1
                stats["agent_claims"].append({"at": time.strftime("%T"), "roles": roles})
                log.write(f"{time.strftime('%T')} both agents answer role=server: {roles}\n")
    lock = threading.Lock()
    last = now()
    in_split = False
    while not stopping:
        t = now()
        stats["longest_gap_ms"] = max(stats["longest_gap_ms"], int((t - last) * 1000))
        last = t
        s = servers_of(work, export)
        stats["samples"] += 1
        could = {n: [x for x in s[n] if x["state"] not in (None, "T", "t", "Z", "X") and x["owner"] and x["listening"]]
                 for n in s}
        if could["a"] and could["b"]:
            # A sample reads /proc one process after the other (slowly, on a
            # loaded machine): a server read early may have been fenced before
            # its successor, read later, started. Both must still be there
            # now, every one read again after all were read once.
            could = {n: [x for x in could[n] if still_could(x["pid"], work, n)] for n in could}
        if could["a"] and could["b"]:
            stats["split_brain"] += 1
            desc = {n: [(x["pid"], x["epoch"]) for x in could[n]] for n in could}
            if not in_split:
                stats["moments"].append({"at": time.strftime("%T"), "servers": desc})
            in_split = True
            log.write(f"{time.strftime('%T')} SPLIT BRAIN: both nodes could accept writes: "
                      f"a {desc['a']} b {desc['b']} (pid, epoch)\n")
        else:
            in_split = False
        if t - last_agents >= 1.0 and not (agent_thread and agent_thread.is_alive()):
            # In a thread: an unreachable agent (a cut NIC) must not delay the 200 ms samples.
            last_agents = t
            agent_thread = threading.Thread(target=ask_agents, daemon=True)
            agent_thread.start()
        with lock, open(out_path + ".tmp", "w") as f:
            json.dump(stats, f)
        os.replace(out_path + ".tmp", out_path)
        time.sleep(max(0.0, 0.2 - (now() - t)))


# --- the report ---------------------------------------------------------------------

def report(work, results):
    def load(p, default):
        try:
            return json.load(open(p))
        except (OSError, ValueError):
            return default

    env = dict(l.rstrip("\n").split("=", 1) for l in open(f"{results}/run.env") if "=" in l)
    faults = [l.rstrip("\n").split("\t") for l in open(f"{results}/faults.tsv")][1:]
    kinds = {}
    outages = []
    for f in faults:
        kinds[f[1]] = kinds.get(f[1], 0) + 1
        if f[5] != "ok":
            outages.append(f)
    # Failovers: the swap log lines of both agents.
    swaps, causes = [], {}
    for node in ("a", "b"):
        try:
            lines = open(f"{results}/logs/agent-{node}.log", errors="replace").read().splitlines()
        except OSError:
            continue
        for line in lines:
            if "swap begins" in line:
                # logfmt, keys in order, the message last: ... reason=TEXT [BatonAgent] swap begins
                reason = "?"
                if "reason=" in line:
                    reason = line.split("reason=", 1)[1].split(" [Baton")[0].strip().strip('"')
                    reason = re.sub(r"[0-9]+", "N", reason)
                swaps.append((node, line))
                key = "planned" if reason.startswith("planned") else reason.split(":")[0][:60]
                causes[key] = causes.get(key, 0) + 1
    done = sum(1 for node in ("a", "b") for l in open(f"{results}/logs/agent-{node}.log", errors="replace")
               if "swap done" in l) if os.path.exists(f"{results}/logs/agent-a.log") else 0
    takeovers = sum(1 for node in ("a", "b") for l in open(f"{results}/logs/agent-{node}.log", errors="replace")
                    if "taking the export over without its fence" in l) if os.path.exists(f"{results}/logs/agent-a.log") else 0
    isolated_no_swap = sum(1 for node in ("a", "b") for l in open(f"{results}/logs/agent-{node}.log", errors="replace")
                           if "this node is the isolated one: no swap" in l) if os.path.exists(f"{results}/logs/agent-a.log") else 0
    restarts = sum(1 for node in ("a", "b") for l in open(f"{results}/logs/agent-{node}.log", errors="replace")
                   if "export server started" in l) if os.path.exists(f"{results}/logs/agent-a.log") else 0
    # fio rounds
    rounds = [l.rstrip("\n").split("\t") for l in open(f"{results}/fio-rounds.tsv")][1:] if os.path.exists(f"{results}/fio-rounds.tsv") else []
    fio_err = sum(1 for r in rounds if r[2] == "error")
    fio_verify = sum(1 for r in rounds if r[2] == "verify")
    fio_full = sum(1 for r in rounds if r[2] == "enospc")
    fio_ok = sum(1 for r in rounds if r[2] == "ok")
    lat = max([float(r[3]) for r in rounds if r[3] not in ("", "-")] or [0.0])
    lat_at = next((r[0] for r in rounds if r[3] not in ("", "-") and float(r[3]) == lat), "-")
    wrote = sum(int(r[4]) for r in rounds if r[4].isdigit()) >> 20
    verified = sum(int(r[5]) for r in rounds if r[5].isdigit()) >> 20
    meta = load(f"{results}/meta.json", {}).get("stats", {})
    final = load(f"{results}/final-check.json", {})
    final_bad = len(final.get("missing", [])) + len(final.get("differ", [])) + len(final.get("unexpected", []))
    w = load(f"{results}/watch.json", {})
    epochs = env.get("epoch_end", "?")
    rows = [
        ("duration", f"{env.get('duration_s', '?')} s (seed {env.get('seed')}, a fault every ~{env.get('fault_every')} s)"),
        ("faults", f"{len(faults)}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))),
        ("failovers (epoch changes)", f"{env.get('epoch_start', '?')} -> {epochs}: {int(epochs) - int(env.get('epoch_start', 1)) if epochs.isdigit() else '?'}"),
        ("  swaps begun / done", f"{len(swaps)} / {done} (not done: 'this node is the isolated one: no swap' {isolated_no_swap}); takeovers without fence {takeovers}"),
        ("  swaps by cause", ", ".join(f"{k} {v}" for k, v in sorted(causes.items())) or "-"),
        ("  server (re)starts", f"{restarts} 'export server started' lines"),
        ("longest IO stall", f"fio max latency {lat:.2f} s (round {lat_at}); metadata longest op "
                             f"{meta.get('longest_op_s', 0):.2f} s ({meta.get('longest_op', '-')})"),
        ("fio rounds", f"{len(rounds)}: ok {fio_ok}, wrote {wrote} MiB, verified {verified} MiB"),
        ("fio errors", f"{fio_err}" + (f" (+{fio_full} ENOSPC refusals while a disk was full)" if fio_full else "")),
        ("verify failures", f"{fio_verify}"),
        ("metadata ops", f"{meta.get('ops', 0)}, errors {meta.get('errors', 0)}, ENOSPC refusals (disk full) {meta.get('enospc_refused', 0)}"),
        ("lost writes (manifest)", f"{meta.get('mismatches', 0)} in {meta.get('checks', 0)} checks; after remount: {final_bad} of {final.get('files', '?')} files"
                                   + ("" if final else " (final check did not run)")),
        ("outages (deadline missed)", f"{len(outages)}" + "".join(f"\n{'':28}{o[0]} {o[1]} {o[2]}: {o[5]}" for o in outages)),
        ("split brain moments", f"{w.get('split_brain', '?')} in {w.get('samples', '?')} samples of 200 ms (longest gap {w.get('longest_gap_ms', '?')} ms); "
                                f"both agents claim server: {w.get('agents_both_claim', '?')} of {w.get('agent_samples', '?')}"),
    ]
    text = "\n".join(f"{k:<28}{v}" for k, v in rows)
    details = []
    for e in meta.get("error_list", [])[:10]:
        details.append(f"metadata error: {e}")
    for m in meta.get("mismatch_list", [])[:10]:
        details.append(f"manifest mismatch: {m}")
    for m in w.get("moments", [])[:10]:
        details.append(f"split brain: {m}")
    for r in rounds:
        if r[2] in ("error", "verify"):
            details.append(f"fio round {r[0]}: {r[2]} {r[6] if len(r) > 6 else ''}")
    out = text + ("\n\n" + "\n".join(details) if details else "")
    print(out)
    open(f"{results}/summary.txt", "w").write(out + "\n")
    bad = fio_err + fio_verify + meta.get("errors", 0) + meta.get("mismatches", 0) + final_bad + \
        (w.get("split_brain", 1) if isinstance(w.get("split_brain"), int) else 1) + len(outages) + (0 if final else 1)
    return 1 if bad else 0


def fio_round(json_path, log_path, rc, diskfull_recent, stopping_now):
    """Prints result, longest latency (s), bytes written, bytes read, detail (tab-separated)."""
    try:
        j = json.load(open(json_path))["jobs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        j = None
    try:
        text = open(log_path, errors="replace").read()
    except OSError:
        text = ""
    detail = " ".join(l.strip() for l in text.splitlines() if "error" in l.lower() or "verify" in l.lower())[:300]
    lat, wb, rb, err = "-", "-", "-", None
    if j:
        lats = [j[d]["clat_ns"]["max"] for d in ("read", "write")] + [j.get("sync", {}).get("lat_ns", {}).get("max", 0)]
        lat = "%.3f" % (max(lats) / 1e9)
        wb, rb, err = str(j["write"]["io_bytes"]), str(j["read"]["io_bytes"]), j.get("error", 0)
    if rc == 0 and err == 0:
        result = "ok"
    elif stopping_now:
        result = "stopped"
    elif err == errno.EILSEQ or "verify:" in text or "bad magic" in text or "crc32c" in text.lower() and "bad" in text.lower():
        result = "verify"
    elif (err == errno.ENOSPC or "No space left" in text) and diskfull_recent:
        result = "enospc"
    else:
        result = "error"
        detail = f"rc={rc} error={err} {detail}"
    print("\t".join([result, lat, wb, rb, detail.replace("\t", " ")]))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "meta":
        meta(sys.argv[2], sys.argv[3])
    elif cmd == "check":
        check_main(sys.argv[2], sys.argv[3])
    elif cmd == "watch":
        watch(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "fio-round":
        fio_round(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1", sys.argv[6] == "1")
    elif cmd == "report":
        sys.exit(report(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
