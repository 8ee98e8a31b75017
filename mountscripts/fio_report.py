#!/usr/bin/env python3
"""Summarises one fio-failover run: IO stalls, verify result, an IOPS plot.

    fio_report.py RESULTS_DIR

Reads what mountscripts/fio-failover left in RESULTS_DIR:
  run.env            key=value lines: the run's parameters (trigger, rw, fio_rc, ...)
  events.tsv         unix_ms<TAB>kind<TAB>text: fio_start, trigger, resume, ...
  fio.json           fio's JSON output
  fio.stderr         fio's messages (verify failures are printed there)
  raw/fio_clat.*.log fio's per-IO completion latency log (write_lat_log with
                     log_avg_msec=0 and log_unix_epoch=1: one line per IO,
                     "unix_ms, clat_ns, ddir, bs, ...")
and writes:
  summary.json       everything below, machine-readable
  iops.dat           IOPS per bin (time since fio start, read, write, total)
  failover.gp        the gnuplot script
  failover.png       IOPS over time, failure moment and longest stall marked
and prints a short human summary on stdout.

A *stall* is an interval in which no IO completed: the gap between two
consecutive completions in the per-IO log (millisecond resolution). The
longest one over the whole run is reported, and separately the longest one
that overlaps the failover window [trigger, resume + 5 s] (resume = the
script's own "resume" event if any, else the trigger): that one is the pause
the failure caused, and its end is when IO flowed again.

Exit status: 0 if fio finished and verify passed, 1 if not, 2 if this script
could not read its input.
"""
import glob
import json
import math
import os
import re
import subprocess
import sys

WINDOW_AFTER_RESUME_MS = 5000
ZOOM_BIN_MS = 10


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


def read_events(path):
    events = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t", 2)
                if len(parts) >= 2 and parts[0].isdigit():
                    events.append({"ms": int(parts[0]), "kind": parts[1],
                                   "text": parts[2] if len(parts) > 2 else ""})
    events.sort(key=lambda e: e["ms"])
    return events


def read_clat_logs(results):
    """Returns sorted (unix_ms, clat_ns, ddir, bs) of every completed IO."""
    ios = []
    for path in sorted(glob.glob(os.path.join(results, "raw", "*_clat.*.log"))):
        with open(path) as f:
            for line in f:
                fields = [x.strip() for x in line.split(",")]
                if len(fields) < 4:
                    continue
                try:
                    ios.append((int(fields[0]), int(fields[1]), int(fields[2]), int(fields[3])))
                except ValueError:
                    continue
    ios.sort()
    return ios


def read_fio_json(path):
    """fio may print messages before the JSON document; find the document."""
    try:
        text = open(path).read()
    except OSError:
        return None
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return None


def gaps(times):
    """(length_ms, start_ms, end_ms) for consecutive completion times."""
    return [(b - a, a, b) for a, b in zip(times, times[1:])]


def fmt_s(ms):
    return f"{ms / 1000:.3f} s"


def verify_messages(stderr_path):
    lines = []
    if os.path.exists(stderr_path):
        with open(stderr_path, errors="replace") as f:
            for line in f:
                if re.search(r"verify|bad magic|bad header|crc32c", line, re.I):
                    lines.append(line.rstrip("\n"))
    return lines


def io_error_messages(stderr_path):
    lines = []
    if os.path.exists(stderr_path):
        with open(stderr_path, errors="replace") as f:
            for line in f:
                if re.search(r"io_u error|error=|No such|Input/output|Transport endpoint", line):
                    lines.append(line.rstrip("\n"))
    return lines


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    results = sys.argv[1]
    env = read_env(os.path.join(results, "run.env"))
    events = read_events(os.path.join(results, "events.tsv"))
    ios = read_clat_logs(results)
    fio = read_fio_json(os.path.join(results, "fio.json"))
    stderr_path = os.path.join(results, "fio.stderr")
    bin_ms = int(env.get("bin_ms", "100"))

    def event(kind):
        for e in events:
            if e["kind"] == kind:
                return e
        return None

    start_ev = event("fio_start")
    trigger_ev = event("trigger")
    resume_ev = event("resume")
    if start_ev is None:
        print("fio_report: no fio_start event in events.tsv", file=sys.stderr)
        return 2
    t0 = start_ev["ms"]

    def rel(ms):
        return None if ms is None else round((ms - t0) / 1000, 3)

    # --- stalls -------------------------------------------------------------
    times = [io[0] for io in ios]
    all_gaps = gaps(times)
    # IO that never came back (fio ended on an error, or was stopped): the
    # interval from the last completion to fio's end is a stall too. (After a
    # normal end it is only fio's teardown.)
    end_ev = event("fio_end")
    open_end = None
    if end_ev and times and end_ev["ms"] > times[-1] and env.get("fio_rc", "0") != "0":
        open_end = end_ev["ms"]
        all_gaps.append((open_end - times[-1], times[-1], open_end))
    longest = max(all_gaps, default=None)
    failover_stall = None
    if trigger_ev and all_gaps:
        w_start = trigger_ev["ms"]
        w_end = (resume_ev["ms"] if resume_ev else trigger_ev["ms"]) + WINDOW_AFTER_RESUME_MS
        in_window = [g for g in all_gaps if g[2] > w_start and g[1] < w_end]
        failover_stall = max(in_window, default=None)

    by_time = {}
    for io in ios:
        by_time.setdefault(io[0], []).append(io)

    def stall_json(g):
        if g is None:
            return None
        d = {"ms": g[0], "start_s": rel(g[1]), "end_s": rel(g[2])}
        if trigger_ev:
            d["end_after_trigger_ms"] = g[2] - trigger_ev["ms"]
        # Which operation waited: the first IO to complete at the stall's end
        # has a latency close to the stall if it was the one in flight; if not,
        # fio was in an operation that is not in the per-IO log (the fsync,
        # close and open between a write phase and its verify phase).
        first = max(by_time.get(g[2], []), key=lambda io: io[1], default=None)
        if g[2] == open_end:
            d["stalled_op"] = "IO did not resume: the stall lasted until fio ended"
            d["open"] = True
        elif first and first[1] / 1e6 >= 0.5 * g[0]:
            d["stalled_op"] = (f"{'read' if first[2] == 0 else 'write'} of {first[3]} bytes, "
                               f"completion latency {first[1] / 1e6:.1f} ms")
        else:
            d["stalled_op"] = ("no read or write in flight: fio was in fsync/close/open "
                               "between a write phase and its verify phase")
        return d

    # --- latency ------------------------------------------------------------
    max_clat_log_ms = max((io[1] for io in ios), default=0) / 1e6
    job = fio["jobs"][0] if fio and fio.get("jobs") else None
    max_clat = {}
    io_bytes = {}
    total_ios = {}
    if job:
        for d in ("read", "write"):
            max_clat[d] = round(job[d]["clat_ns"]["max"] / 1e6, 3)
            io_bytes[d] = job[d]["io_bytes"]
            total_ios[d] = job[d]["total_ios"]

    # --- verify -------------------------------------------------------------
    fio_rc = int(env.get("fio_rc") or "-1")
    rw = env.get("rw", "")
    mixed = rw in ("rw", "readwrite", "randrw")
    vmsgs = verify_messages(stderr_path)
    iomsgs = io_error_messages(stderr_path)
    reasons = []
    fio_error = job["error"] if job else None
    total_err = job.get("total_err") if job else None
    if fio_rc != 0:
        reasons.append(f"fio exit status {fio_rc}")
    if job is None:
        reasons.append("no fio JSON result")
    else:
        if fio_error:
            what = "EILSEQ: verify mismatch" if fio_error == 84 else os.strerror(fio_error)
            reasons.append(f"fio job error {fio_error} ({what})")
        if total_err:
            reasons.append(f"{total_err} errors counted by fio (continue_on_error=verify)")
        w, r = io_bytes["write"], io_bytes["read"]
        if w == 0:
            reasons.append("nothing written")
        elif (r < w) if mixed else (r != w):
            reasons.append(f"verify phase incomplete: read {r} bytes for {w} written")
    if vmsgs:
        reasons.append(f"{len(vmsgs)} verify messages in fio.stderr")
    verify_ok = not reasons
    # Bad blocks: fio counts them (continue_on_error=verify) and prints each.
    verify_errors = max(total_err or 0, len(vmsgs), 1 if fio_error == 84 else 0)
    io_errors = sum(1 for m in iomsgs if "io_u error" in m)

    # --- IOPS per bin -------------------------------------------------------
    end_ms = max([times[-1] if times else t0] + [e["ms"] for e in events])
    dat = os.path.join(results, "iops.dat")
    ymax = write_iops(dat, ios, t0, t0, end_ms, bin_ms)
    zoom = None
    if trigger_ev:
        z_from = max(t0, trigger_ev["ms"] - 1000)
        z_to = max([trigger_ev["ms"], resume_ev["ms"] if resume_ev else 0]
                   + [failover_stall[2] if failover_stall else 0]) + 1500
        z_to = min(z_to, end_ms)
        zoom_dat = os.path.join(results, "iops-zoom.dat")
        zoom = (z_from, z_to, zoom_dat, write_iops(zoom_dat, ios, t0, z_from, z_to, ZOOM_BIN_MS))

    # Baseline: mean IOPS over the 2 s before the trigger (from the first IO on).
    baseline = None
    if trigger_ev:
        lo = max(times[0] if times else t0, trigger_ev["ms"] - 2000)
        n = sum(1 for t in times if lo <= t < trigger_ev["ms"])
        if trigger_ev["ms"] - lo >= 500:
            baseline = round(n * 1000 / (trigger_ev["ms"] - lo))

    summary = {
        "results_dir": os.path.abspath(results),
        "trigger": env.get("trigger"),
        "mode": env.get("mode"),
        "export": env.get("export"),
        "mount": env.get("mount"),
        "server_pid": env.get("server_pid") or None,
        "fio": {
            "rw": rw, "bssplit": env.get("bssplit"), "size": env.get("size"),
            "loops": int(env.get("loops", "0") or 0), "direct": env.get("direct"),
            "exit_status": fio_rc, "error": fio_error, "elapsed_s": job.get("elapsed") if job else None,
            "ios": total_ios, "io_bytes": io_bytes,
        },
        "verify": {
            "result": "ok" if verify_ok else "failed",
            "error_count": verify_errors,
            "io_errors": io_errors,
            "reasons": reasons,
            "completeness_check": "verified read bytes == written bytes" if not mixed
                     else "read bytes >= written bytes (mixed job: verify reads not separable)",
            "messages": vmsgs[:20],
            "io_error_messages": iomsgs[:20],
        },
        "events": [dict(e, t_s=rel(e["ms"])) for e in events],
        "trigger_at_s": rel(trigger_ev["ms"]) if trigger_ev else None,
        "resume_at_s": rel(resume_ev["ms"]) if resume_ev else None,
        "longest_stall": stall_json(longest),
        "failover_stall": stall_json(failover_stall),
        "max_completion_latency_ms": {
            "log": round(max_clat_log_ms, 3),
            **{f"fio_{d}": v for d, v in max_clat.items()},
        },
        "iops_baseline_before_trigger": baseline,
        "iops_bin_ms": bin_ms,
        "files": {"png": "failover.png", "iops": "iops.dat", "fio_json": "fio.json",
                  "clat_log": [os.path.relpath(p, results) for p in
                               sorted(glob.glob(os.path.join(results, "raw", "*_clat.*.log")))]},
    }

    # --- plot ---------------------------------------------------------------
    png = os.path.join(results, "failover.png")
    gp = os.path.join(results, "failover.gp")
    trig_label = env.get("trigger_label") or env.get("trigger", "failure")
    resume_label = resume_ev["text"] if resume_ev else ""
    lines = [
        f"set terminal pngcairo size 1280,{960 if zoom else 640} font 'DejaVu Sans,11'",
        f"set output '{png}'",
        "set grid",
        "set style fill transparent solid 0.35 noborder",
        "set xlabel 'time since fio start (s)'",
    ]
    if longest:
        s, e = rel(longest[1]), rel(longest[2])
        lines.append(f"set object 1 rect from {s},graph 0 to {e},graph 1 fc rgb '#f4a0a0' behind")
        lines.append(f"set label 1 {gp_str(f'no IO for {longest[0] / 1000:.3f} s')} at {e},graph 0.93 left offset 0.5,0 front tc rgb '#a00000'")
    if failover_stall and failover_stall != longest:
        s, e = rel(failover_stall[1]), rel(failover_stall[2])
        lines.append(f"set object 2 rect from {s},graph 0 to {e},graph 1 fc rgb '#f8d090' behind")
        lines.append(f"set label 2 {gp_str(f'failover stall {failover_stall[0] / 1000:.3f} s')} at {e},graph 0.86 left offset 0.5,0 front tc rgb '#a06000'")
    if trigger_ev:
        t = rel(trigger_ev["ms"])
        lines.append(f"set arrow 1 from {t},graph 0 to {t},graph 1 nohead lc rgb '#d00000' lw 2 front")
    if resume_ev:
        t = rel(resume_ev["ms"])
        lines.append(f"set arrow 2 from {t},graph 0 to {t},graph 1 nohead lc rgb '#0060d0' lw 2 dt 2 front")

    epoch_ev = event("new_epoch")
    if epoch_ev:
        t = rel(epoch_ev["ms"])
        lines.append(f"set arrow 3 from {t},graph 0 to {t},graph 1 nohead lc rgb '#8000a0' lw 1.5 dt 3 front")

    def series(path):
        return [
            f"'{path}' using 1:4 with steps lw 2 lc rgb '#202020' title 'total IOPS'",
            "'' using 1:3 with steps lw 1 lc rgb '#2ca02c' title 'write IOPS'",
            "'' using 1:2 with steps lw 1 lc rgb '#1f77b4' title 'read IOPS (incl. verify reads)'",
        ]

    plot = series(dat)
    if trigger_ev:
        t_trig = rel(trigger_ev["ms"])
        plot.append(f"keyentry with lines lc rgb '#d00000' lw 2 title {gp_str(f'failure: {trig_label} at {t_trig:.3f} s')}")
    if resume_ev:
        t_res = rel(resume_ev["ms"])
        plot.append(f"keyentry with lines lc rgb '#0060d0' lw 2 dt 2 title {gp_str(f'{resume_label} at {t_res:.3f} s')}")
    if epoch_ev:
        t_ep, ep_text = rel(epoch_ev["ms"]), epoch_ev["text"]
        plot.append(f"keyentry with lines lc rgb '#8000a0' lw 1.5 dt 3 title {gp_str(f'{ep_text} at {t_ep:.3f} s')}")
    if longest:
        plot.append(f"keyentry with boxes fc rgb '#f4a0a0' title {gp_str(f'longest stall (no IO completed) {longest[0] / 1000:.3f} s')}")
    if failover_stall and failover_stall != longest:
        plot.append(f"keyentry with boxes fc rgb '#f8d090' title {gp_str(f'failover stall {failover_stall[0] / 1000:.3f} s')}")
    title = (f"Baton failover: trigger {env.get('trigger')} ({env.get('mode')}), fio {rw} "
             f"verify=crc32c {'OK' if verify_ok else 'FAILED'}"
             + (f", longest stall {longest[0] / 1000:.3f} s" if longest else ""))
    if zoom:
        lines.append("set multiplot")
        lines.append("set size 1,0.6\nset origin 0,0.4")
    lines += [
        f"set title {gp_str(title)}",
        f"set ylabel 'IOPS (per {bin_ms} ms bin, scaled to 1/s)'",
        "set key inside right top opaque box vertical samplen 2 spacing 1.1",
        f"set yrange [0:{max(ymax, 1) * 1.6:.0f}]",
        f"set xrange [0:{max(1, (end_ms - t0) / 1000):.3f}]",
        "plot " + ", \\\n     ".join(plot),
    ]
    if zoom:
        z_from, z_to, zoom_dat, zmax = zoom
        lines += [
            "set size 1,0.4\nset origin 0,0",
            f"set title 'around the failure, {ZOOM_BIN_MS} ms bins'",
            f"set ylabel 'IOPS (per {ZOOM_BIN_MS} ms bin, scaled to 1/s)'",
            "unset key",
            f"set yrange [0:{max(zmax, 1) * 1.25:.0f}]",
            f"set xrange [{rel(z_from):.3f}:{rel(z_to):.3f}]",
            "plot " + ", \\\n     ".join(series(zoom_dat)),
            "unset multiplot",
        ]
    with open(gp, "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        subprocess.run(["gnuplot", gp], check=True, capture_output=True, text=True)
        summary["files"]["png"] = "failover.png"
    except (OSError, subprocess.CalledProcessError) as err:
        msg = getattr(err, "stderr", "") or str(err)
        print(f"fio_report: gnuplot failed: {msg.strip()}", file=sys.stderr)
        summary["files"]["png"] = None

    with open(os.path.join(results, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    # --- human summary --------------------------------------------------------
    out = []
    out.append(f"trigger:        {env.get('trigger')} ({env.get('mode')})"
               + (f" at {rel(trigger_ev['ms']):.3f} s" if trigger_ev else " (not fired)")
               + (f"; {resume_label} at {rel(resume_ev['ms']):.3f} s" if resume_ev else ""))
    out.append(f"fio:            {rw} {env.get('bssplit')} size={env.get('size')} loops={env.get('loops')} "
               f"direct={env.get('direct')}, {len(ios)} IOs in {((job or {}).get('elapsed') or 0)} s, exit {fio_rc}")
    v = "OK" if verify_ok else "FAILED: " + "; ".join(reasons)
    if job:
        v += f" (read {io_bytes['read'] >> 20} MiB, verify reads included, for {io_bytes['write'] >> 20} MiB written; verify errors {verify_errors}, IO errors {io_errors})"
    out.append(f"verify:         {v}")
    if longest:
        out.append(f"longest stall:  {fmt_s(longest[0])} (from {rel(longest[1]):.3f} s to {rel(longest[2]):.3f} s)")
    if failover_stall:
        fs = summary["failover_stall"]
        if fs.get("open"):
            out.append(f"failover stall: {fmt_s(failover_stall[0])}; IO never flowed again before fio ended")
        else:
            out.append(f"failover stall: {fmt_s(failover_stall[0])}; IO flowing again "
                       f"{fmt_s(failover_stall[2] - trigger_ev['ms'])} after the trigger")
        out.append(f"stalled op:     {fs['stalled_op']}")
    out.append(f"max latency:    {max_clat_log_ms / 1000:.3f} s (completion latency, per-IO log)"
               + (f"; fio read {max_clat['read'] / 1000:.3f} s, write {max_clat['write'] / 1000:.3f} s" if max_clat else ""))
    if baseline is not None:
        out.append(f"IOPS before:    {baseline} (mean over up to 2 s before the trigger)")
    out.append(f"plot:           {os.path.abspath(png) if summary['files']['png'] else '(gnuplot failed)'}")
    out.append(f"summary:        {os.path.abspath(os.path.join(results, 'summary.json'))}")
    print("\n".join(out))
    return 0 if verify_ok else 1


def write_iops(path, ios, t0, t_from, t_to, bin_ms):
    """IOPS per bin of bin_ms over [t_from, t_to] (unix ms) to path, times in
    s since t0; returns the largest total."""
    nbins = max(1, math.ceil((t_to - t_from + 1) / bin_ms))
    counts = [[0, 0] for _ in range(nbins)]
    for ms, _clat, ddir, _bs in ios:
        i = (ms - t_from) // bin_ms
        if 0 <= i < nbins and ddir in (0, 1):
            counts[i][ddir] += 1
    scale = 1000 / bin_ms
    with open(path, "w") as f:
        f.write(f"# time_s(bin start, since fio start)  read_iops  write_iops  total_iops   (bins of {bin_ms} ms)\n")
        for i, (r, w) in enumerate(counts):
            f.write(f"{(t_from - t0 + i * bin_ms) / 1000:.3f} {r * scale:.0f} {w * scale:.0f} {(r + w) * scale:.0f}\n")
    return max(((r + w) * scale for r, w in counts), default=0)


def gp_str(s):
    """A gnuplot string literal (single quotes; a quote is doubled)."""
    return "'" + s.replace("'", "''") + "'"


if __name__ == "__main__":
    sys.exit(main())
