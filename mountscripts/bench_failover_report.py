#!/usr/bin/env python3
"""Tables of mountscripts/bench-failover.

    bench_failover_report.py line RUN_DIR NODE_BEFORE NODE_AFTER READY_WAIT_S
        one line about one fio-failover run (from its summary.json)
    bench_failover_report.py report RESULTS_DIR
        reads RESULTS_DIR/runs.tsv, runs/*/summary.json, throughput/*/*.json,
        writes RESULTS_DIR/table.txt and table.json, prints the text

Stall: the longest interval of a fio run in which no IO completed
(summary.json longest_stall, from fio's per-IO log, ms resolution). The
failover stall is the longest one around the trigger; a run whose longest
stall lies elsewhere is marked. Exit status of `report`: 1 if a run's verify
failed, a failover did not complete, or a throughput job failed; else 0.
"""
import glob
import json
import os
import statistics
import sys

KINDS = [("stop", "stall (SIGSTOP) failover"), ("migrate", "planned migration")]
THROUGHPUT_ROWS = [  # job, fio section, direction, unit
    ("seq-write", "seq-write", "write", "MB/s"),
    ("seq-read", "seq-read", "read", "MB/s"),
    ("randwrite-fsync", "randwrite-fsync", "write", "IOPS"),
    ("randread", "randread", "read", "IOPS"),
]
OUTLIER_FACTOR = 2.0
STALL_COUNT_MS = 500      # stalls this long count towards "stalled after trigger"
STALL_WINDOW_MS = 10000   # ... if they start within this long after the trigger


def read_json(path):
    """fio may print notes before its JSON document: start at the first {."""
    try:
        text = open(path).read()
        return json.loads(text[text.index("{"):])
    except (OSError, ValueError):
        return None


def stalls_after_trigger(run_dir, summary):
    """Every stall of at least STALL_COUNT_MS that ends after the trigger and
    starts within STALL_WINDOW_MS of it, in ms: a swap can pause IO twice in a
    row (the IO in flight, then the first write after it), which the longest
    stall alone does not show."""
    trig = next((e["ms"] for e in summary.get("events", []) if e.get("kind") == "trigger"), None)
    if trig is None:
        return None
    times = []
    for path in glob.glob(os.path.join(run_dir, "raw", "*_clat.*.log")):
        with open(path) as fh:
            for line in fh:
                head = line.split(",", 1)[0].strip()
                if head.isdigit():
                    times.append(int(head))
    times.sort()
    return [b - a for a, b in zip(times, times[1:])
            if b - a >= STALL_COUNT_MS and b > trig and a < trig + STALL_WINDOW_MS]


def run_figures(run_dir):
    s = read_json(os.path.join(run_dir, "summary.json"))
    if s is None:
        return None
    after = stalls_after_trigger(run_dir, s)
    longest = s.get("longest_stall") or {}
    failover = s.get("failover_stall") or {}
    verify = s.get("verify") or {}
    return {
        "longest_stall_ms": longest.get("ms"),
        "longest_stall_at_s": longest.get("start_s"),
        "longest_stall_op": longest.get("stalled_op"),
        "failover_stall_ms": failover.get("ms"),
        "trigger_at_s": s.get("trigger_at_s"),
        "longest_is_failover": bool(longest) and longest == failover,
        "max_latency_ms": (s.get("max_completion_latency_ms") or {}).get("log"),
        "verify": verify.get("result"),
        "verify_reasons": verify.get("reasons", []),
        "errors": verify.get("error_count", 0),
        "io_errors": verify.get("io_errors", 0),
        "fio_exit": (s.get("fio") or {}).get("exit_status"),
        "loops": (s.get("fio") or {}).get("loops"),
        "elapsed_s": (s.get("fio") or {}).get("elapsed_s"),
        "iops_before": s.get("iops_baseline_before_trigger"),
        "stalls_after_trigger_ms": after,
        "stalled_after_trigger_ms": None if after is None else sum(after),
    }


def secs(ms):
    return "-" if ms is None else "%.3f" % (ms / 1000)


def cmd_line(run_dir, before, after, ready):
    f = run_figures(run_dir)
    if f is None:
        print("no summary.json in " + run_dir)
        return 1
    text = "longest stall %s s" % secs(f["longest_stall_ms"])
    if not f["longest_is_failover"] and f["failover_stall_ms"] is not None:
        text += " (not at the failover: failover stall %s s)" % secs(f["failover_stall_ms"])
    text += ", verify %s, errors %d, IO errors %d, server %s -> %s, standby watching %s s after fio" % (
        "OK" if f["verify"] == "ok" else "FAILED", f["errors"], f["io_errors"], before, after, ready)
    print(text)
    return 0


def read_tsv(path):
    rows = []
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        for line in fh:
            if line.strip():
                rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
    return rows


def read_env(path):
    env = {}
    if os.path.exists(path):
        for line in open(path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env


def table(header, rows, right_from=1):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "  ".join(str(c).ljust(w) if i < right_from else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def throughput(results, failures):
    def load(target, job, section, direction, unit):
        base = os.path.join(results, "throughput", target, job)
        if not os.path.exists(base + ".rc"):
            return None
        rc = open(base + ".rc").read().strip()
        doc = read_json(base + ".json")
        if rc != "0" or doc is None:
            failures.append("throughput %s %s: fio exit %s" % (target, job, rc))
            return "FAIL"
        j = next((j for j in doc.get("jobs", []) if j.get("jobname") == section), None)
        if j is None or j.get("error"):
            failures.append("throughput %s %s: fio error %s" % (target, job, j and j.get("error")))
            return "FAIL"
        return j[direction]["bw_bytes"] / 1e6 if unit == "MB/s" else j[direction]["iops"]

    out = []
    for job, section, direction, unit in THROUGHPUT_ROWS:
        c = load("cluster", job, section, direction, unit)
        s = load("single", job, section, direction, unit)
        ratio = c / s if isinstance(c, float) and isinstance(s, float) and s > 0 else None
        out.append({"job": job, "metric": unit, "cluster": c, "single": s,
                    "ratio_cluster_single": None if ratio is None else round(ratio, 3)})
    return out


def fmt_num(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return "%.0f" % v if v >= 100 else "%.1f" % v


def cmd_report(results):
    env = read_env(os.path.join(results, "run.env"))
    tsv = os.path.join(results, "runs.tsv")
    runs = read_tsv(tsv) if os.path.exists(tsv) else []
    failures = []
    per_kind = {}
    for r in runs:
        f = run_figures(os.path.join(results, "runs", r["dir"])) or {}
        rec = {"kind": r["kind"], "n": int(r["n"]), "dir": "runs/" + r["dir"],
               "fio_failover_exit": int(r["rc"]),
               "epoch": [int(r["epoch_before"] or 0), int(r["epoch_after"] or 0)],
               "server_node": [r["node_before"], r["node_after"]],
               "server_pid": [r["pid_before"], r["pid_after"]],
               "ready_wait_s": float(r["ready_wait_s"]), "state": r["state"], **f}
        if not f:
            rec["verify"] = "no summary"
        per_kind.setdefault(r["kind"], []).append(rec)
        if rec.get("verify") != "ok":
            failures.append("%s %d: verify %s %s" % (r["kind"], rec["n"], rec.get("verify"),
                                                     "; ".join(rec.get("verify_reasons", []))))
        if r["state"] != "ok":
            failures.append("%s %d: %s" % (r["kind"], rec["n"], r["state"]))

    summary = {}
    for kind, _ in KINDS:
        recs = per_kind.get(kind, [])
        stalls = [x["longest_stall_ms"] for x in recs if x.get("longest_stall_ms") is not None]
        med = statistics.median(stalls) if stalls else None
        tot = [x["stalled_after_trigger_ms"] for x in recs if x.get("stalled_after_trigger_ms") is not None]
        for x in recs:
            x["outlier"] = bool(med and x.get("longest_stall_ms") is not None
                                and x["longest_stall_ms"] > OUTLIER_FACTOR * med)
        summary[kind] = {
            "runs": len(recs),
            "longest_stall_ms": {"min": min(stalls) if stalls else None, "median": med,
                                 "max": max(stalls) if stalls else None},
            "stalled_after_trigger_ms": {
                "median": statistics.median(tot) if tot else None, "max": max(tot) if tot else None},
            "verify_ok": sum(1 for x in recs if x.get("verify") == "ok"),
            "verify_failed": sum(1 for x in recs if x.get("verify") != "ok"),
            "errors_total": sum(x.get("errors") or 0 for x in recs),
            "io_errors_total": sum(x.get("io_errors") or 0 for x in recs),
            "per_run": recs,
        }

    any_runs = any(summary[kind]["runs"] for kind, _ in KINDS)
    lines = ["Baton failover benchmark, %s (%s, %s CPUs, kernel %s)"
             % (env.get("date", "?"), env.get("host", "?"), env.get("cpus", "?"), env.get("kernel", "?")),
             "baton %s, git %s; fio runs of ~%s s (randrw 4k/64k/1m direct=1 verify=crc32c, trigger at 3 s)"
             % (env.get("baton", "?"), env.get("git", "?"), env.get("runtime", "?")),
             "load average before %s, after %s (other work on the machine skews every figure)"
             % (env.get("load_before", "?"), env.get("load_after", "?")),
             ]
    if any_runs:
        lines += ["", "IO stall per run: the longest interval with no IO completing, seconds; 'all >=0.5 s':",
                  "the sum of every such interval of at least 0.5 s within 10 s of the trigger (a swap may pause IO twice)"]
    rows = []
    for kind, label in KINDS:
        k = summary[kind]
        if not k["runs"]:
            continue
        st = k["longest_stall_ms"]
        sa = k["stalled_after_trigger_ms"]
        rows.append([label, k["runs"], secs(st["median"]), secs(st["max"]), secs(st["min"]),
                     "%s / %s" % (secs(sa["median"]), secs(sa["max"])),
                     "%d ok, %d failed" % (k["verify_ok"], k["verify_failed"]),
                     k["errors_total"], k["io_errors_total"]])
    lines += [] if not any_runs else table(["trigger", "runs", "median s", "max s", "min s", "all >=0.5 s: median / max", "verify", "verify errors", "IO errors"],
                   rows, right_from=1)
    for kind, label in KINDS:
        recs = summary[kind]["per_run"]
        if not recs:
            continue
        lines += ["", "%s, per run:" % label]
        prow = []
        for x in recs:
            note = []
            if x.get("outlier"):
                note.append("> %.0fx median" % OUTLIER_FACTOR)
            if x.get("longest_stall_ms") is not None and not x.get("longest_is_failover"):
                note.append("longest stall not at the failover (at %s s; failover stall %s s)"
                            % (x.get("longest_stall_at_s"), secs(x.get("failover_stall_ms"))))
            if x["state"] != "ok":
                note.append(x["state"])
            after = x.get("stalls_after_trigger_ms")
            prow.append([x["n"], secs(x.get("longest_stall_ms")),
                         "-" if after is None else "%s (%d)" % (secs(sum(after)), len(after)),
                         secs(x.get("max_latency_ms")),
                         str(x.get("verify")).upper(),
                         x.get("errors", "-"), x.get("io_errors", "-"),
                         "%s->%s" % tuple(x["server_node"]), "%d->%d" % tuple(x["epoch"]),
                         "%.2f" % x["ready_wait_s"], "; ".join(note)])
        lines += ["  " + t for t in table(
            ["run", "stall s", "all >=0.5 s (n)", "max lat s", "verify", "errors", "IO errors", "server", "epoch",
             "ready +s", "note"], prow, right_from=1)]

    tp = throughput(results, failures)
    if any(r["cluster"] is not None or r["single"] is not None for r in tp):
        lines += ["", "Throughput (fio jobs of mountscripts/bench, %s s each): cluster mount (sync replication"
                  " to the standby) vs one baton serve + mount" % env.get("runtime", "?")]
        lines += table(["job", "metric", "cluster", "single", "cluster/single"],
                       [[r["job"], r["metric"], fmt_num(r["cluster"]), fmt_num(r["single"]),
                         "-" if r["ratio_cluster_single"] is None else "%.2f" % r["ratio_cluster_single"]]
                        for r in tp], right_from=2)
    if failures:
        lines += ["", "failed:"] + ["  " + f for f in failures]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(results, "table.txt"), "w") as fh:
        fh.write(text)
    doc = {"run": env, "failover": summary, "throughput": tp, "failures": failures,
           "stall_definition": "longest interval with no IO completing in a fio run (per-IO log, ms)"}
    with open(os.path.join(results, "table.json"), "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    sys.stdout.write(text)
    return 1 if failures else 0


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "line":
        return cmd_line(*sys.argv[2:])
    if len(sys.argv) == 3 and sys.argv[1] == "report":
        return cmd_report(sys.argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
