#!/usr/bin/env python3
"""compare.py: Concord next to Gloo and Open MPI on this machine (`make compare`).

Idea: every system runs the same float32 sum allreduce sweep, 4 KiB ... 64 MiB (factor 4), on loopback:
  concord-tcp, concord-shm   concord-bench under `concord run`, CONCORD_TRANSPORT=tcp or shm; the TCP
                             run also measures the raw TCP ring (--raw-ring), reported as system raw-ring,
                             and the same ring over buffers as large as the tensor (--raw-ring-cold),
                             system raw-cold: the limit for moving a tensor's own bytes, out of cache
  gloo-ring, -chunked, -hd   gloo_allreduce (Benchmarks/Baselines), one process per rank started here
  mpi-tcp, mpi-shm           mpi_allreduce under mpirun, BTL tcp,self or the shared-memory BTL
Runs are interleaved to cancel drift (A B A B): for each round, for each N, every system runs once over
all sizes, as four sweeps of two sizes each (4K-16K, 64K-256K, 1M-4M, 16M-64M), because one invocation
has one iteration count. Round 1 uses fixed counts; later rounds give each (system, N, sweep) the count
that makes its slowest row last about --row-seconds, from what the previous round measured, so fast
systems get thousands of iterations at small sizes and slow ones are not stretched. Each (system, N,
size) keeps the median time over rounds; busbw = bytes / time * 2(n-1)/n (GB/s, 1e9).
Every child runs in a process group of its own under a deadline: on a timeout or a failing rank the
groups are killed, the run is reported as failed, and the comparison goes on.
Output: one table per N on stdout, and in --out: compare.json (every run, every raw sample, the
medians), compare.txt (the tables), compare.svg (busbw against size, one panel per N), logs/.
Standard library only.
"""
import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SYSTEMS = [  # (key, label), in table order
    ("concord-tcp", "Concord TCP"), ("concord-shm", "Concord shm"),
    ("gloo-ring", "Gloo ring"), ("gloo-chunked", "Gloo chunked"), ("gloo-hd", "Gloo HD"),
    ("mpi-tcp", "MPI TCP"), ("mpi-shm", "MPI shm"), ("raw-ring", "raw TCP ring"), ("raw-cold", "raw ring cold"),
]
RAW_RINGS = {"raw-ring": "rawBusbw", "raw-cold": "rawColdBusbw"}  # measured by concord-bench, as busbw
LABEL = dict(SYSTEMS)
TCP_PEERS = ["gloo-ring", "gloo-chunked", "gloo-hd", "mpi-tcp"]
SIZES = [4096 * 4**k for k in range(8)]  # 4K ... 64M
# (first size, last size, iterations in round 1, fewest iterations ever): two sizes per invocation.
SWEEPS = [("4K", "16K", 100, 20), ("64K", "256K", 50, 10), ("1M", "4M", 20, 10), ("16M", "64M", 5, 5)]
MOST_ITERATIONS = 20000


def size_label(n):
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def busbw(nbytes, time_us, ranks):
    return nbytes / (time_us * 1e-6) * 2 * (ranks - 1) / ranks / 1e9


# ---------------------------------------------------------------------------------------------- running

def run_group(argvs, env, timeout, log_path):
    """Starts one process per argv, each the leader of a new process group, and waits for all.
    Returns (error or None, stdout of the first process). On a non-zero exit, the deadline or Ctrl-C
    every group is killed (SIGTERM, then SIGKILL), so nothing is left running."""
    procs, outs = [], []
    error = None
    try:
        for argv in argvs:
            out = tempfile.TemporaryFile()
            outs.append(out)
            try:
                procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
            except OSError as e:
                error = f"cannot start {argv[0]}: {e.strerror}"
                break
        deadline = time.monotonic() + timeout
        while error is None:
            codes = [p.poll() for p in procs]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                i, code = bad[0]
                how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
                error = f"process {i} ({os.path.basename(argvs[i][0])}) ended with {how}"
                break
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                error = f"timed out after {timeout:g} s"
                break
            time.sleep(0.02)
    finally:
        if error is not None or any(p.poll() is None for p in procs):
            kill_groups(procs)
    texts = []
    with open(log_path, "w") as log:
        log.write(f"# {' '.join(argvs[0])}{' (+%d more)' % (len(argvs) - 1) if len(argvs) > 1 else ''}\n")
        for i, out in enumerate(outs):
            out.seek(0)
            texts.append(out.read().decode(errors="replace"))
            out.close()
            log.write(f"# --- process {i}\n{texts[-1]}")
    if error:
        tail = "\n".join("".join(texts).strip().splitlines()[-3:])
        error += (": " + tail) if tail else ""
    return error, texts[0] if texts else ""


def kill_groups(procs):
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        end = time.monotonic() + grace
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(0.02)
    for p in procs:
        if p.poll() is None:
            p.wait()


def json_lines(text):
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


class Runner:
    """Knows how to start each system; `run` returns (error, samples) for one sweep."""

    def __init__(self, args, out):
        self.args, self.out = args, out
        self.env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        self.shm_btl = shared_memory_btl()
        self.tmp = tempfile.mkdtemp(prefix="concord-compare-")

    def run(self, system, n, sweep, tag):
        lo, hi, iters, warm = sweep
        sizes = ["-b", lo, "-e", hi, "-f", "4", "-n", str(iters), "-w", str(warm)]
        log = os.path.join(self.out, "logs", f"{tag}.log")
        if system.startswith("concord"):
            return self.run_concord(system, n, sizes, log)
        if system.startswith("gloo"):
            store = tempfile.mkdtemp(dir=self.tmp)
            exe = os.path.join(self.args.baselines, "gloo_allreduce")
            argvs = [[exe, "--algo", system[5:], "--rank", str(r), "--size", str(n), "--store", store] + sizes
                     for r in range(n)]
            error, text = run_group(argvs, self.env, self.args.timeout, log)
            shutil.rmtree(store, ignore_errors=True)
            return error, json_lines(text)
        btl = "tcp,self" if system == "mpi-tcp" else f"{self.shm_btl},self"
        argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(n), "--mca", "pml", "ob1",
                "--mca", "btl", btl, os.path.join(self.args.baselines, "mpi_allreduce"), "--name", system] + sizes
        error, text = run_group([argv], self.env, self.args.timeout, log)
        return error, json_lines(text)

    def run_concord(self, system, n, sizes, log):
        rows_file = os.path.join(self.tmp, "rows.json")
        if os.path.exists(rows_file):
            os.remove(rows_file)
        transport = system.split("-")[1]
        argv = [os.path.join(self.args.bin, "concord"), "run", "-n", str(n), "--grace", "1", "--",
                os.path.join(self.args.bin, "concord-bench"), "allreduce"] + sizes + ["-c", "0", "--json", rows_file]
        if transport == "tcp":
            argv += ["--raw-ring", "--raw-ring-cold"]
        error, _ = run_group([argv], dict(self.env, CONCORD_TRANSPORT=transport), self.args.timeout, log)
        try:
            with open(rows_file) as f:
                rows = json.load(f)
        except (OSError, ValueError) as e:
            return error or f"no rows: {e}", []
        samples = []
        for row in rows:
            t = row["timeMicroseconds"]
            sample = {"system": system, "ranks": n, "bytes": row["bytes"], "time_us": t, "busbw": row["busbw"]}
            if row.get("cpuMicroseconds") is not None:
                sample["cpu_us"] = row["cpuMicroseconds"]
            samples.append(sample)
            for ring, key in RAW_RINGS.items():  # a raw ring's time is the one its busbw implies for these bytes
                if row.get(key):
                    raw = row[key]
                    samples.append({"system": ring, "ranks": n, "bytes": row["bytes"], "busbw": raw,
                                    "time_us": row["bytes"] * 2 * (n - 1) / n / (raw * 1e9) * 1e6})
        return error, samples


def shared_memory_btl():
    """Open MPI 4 calls its shared-memory BTL vader, Open MPI 5 calls it sm."""
    try:
        text = subprocess.run(["ompi_info"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "vader"
    return "sm" if re.search(r"MCA btl: sm\b", text) else "vader"


# ---------------------------------------------------------------------------------------------- noise

def cpu_snapshot():
    """(busy seconds of user+nice+system over all CPUs, steal seconds, total seconds) from /proc/stat, and
    the CPU seconds of this script's finished children; None where unreadable."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = children.ru_utime + children.ru_stime
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None, mine
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return ((user + nice + system) / hz, steal / hz, sum(fields[:8]) / hz), mine


def noise(before, after):
    """The share of all CPU time the host stole and the share other processes used while the script ran
    (busy time minus its own children's), or None. The load average cannot tell: the runs themselves
    keep it high."""
    (b, b_mine), (a, a_mine) = before, after
    if b is None or a is None or a[2] <= b[2]:
        return None
    total = a[2] - b[2]
    others = max(0.0, (a[0] - b[0]) - (a_mine - b_mine))
    return {"steal": (a[1] - b[1]) / total, "others": others / total}


# ---------------------------------------------------------------------------------------------- results

def medians(samples):
    groups = {}
    for s in samples:
        groups.setdefault((s["system"], s["ranks"], s["bytes"]), []).append(s)
    result = []
    for (system, n, nbytes), group in sorted(groups.items()):
        if system in RAW_RINGS:  # measured as a bandwidth: median of busbw
            bw = statistics.median(s["busbw"] for s in group)
            t = nbytes * 2 * (n - 1) / n / (bw * 1e9) * 1e6
        else:
            t = statistics.median(s["time_us"] for s in group)
            bw = busbw(nbytes, t, n)
        row = {"system": system, "ranks": n, "bytes": nbytes, "time_us": t, "busbw": bw, "samples": len(group)}
        cpus = [s["cpu_us"] for s in group if "cpu_us" in s]
        if cpus:
            row["cpu_us"] = statistics.median(cpus)
        result.append(row)
    return result


def fmt_time(t):
    return f"{t:.1f}" if t < 1000 else f"{t:.0f}"


def table(n, med, rounds):
    by = {(m["system"], m["bytes"]): m for m in med if m["ranks"] == n}
    has_cpu = any("cpu_us" in m for m in by.values())
    head1 = f"{'':>6} |" + "".join(f" {LABEL[k]:<15}|" for k, _ in SYSTEMS)
    head2 = f"{'size':>6} |" + "".join(f" {'us':>8} {'GB/s':>6}|" for _ in SYSTEMS)
    ratio_head = f" {'C/peer':>6} {'(peer)':<14} {'C/raw':>6} {'C/cold':>6} {'shm/MPI':>7}" + (f" {'C cpu us':>9}" if has_cpu else "")
    lines = [f"## N = {n} ranks: float32 sum allreduce, loopback, median of {rounds} round(s)",
             head1, head2 + ratio_head, "-" * len(head2 + ratio_head)]
    for nbytes in SIZES:
        cells = []
        for key, _ in SYSTEMS:
            m = by.get((key, nbytes))
            cells.append(f" {fmt_time(m['time_us']):>8} {m['busbw']:>6.2f}|" if m else f" {'-':>8} {'-':>6}|")
        c, shm, raw, cold, mpishm = (
            by.get((k, nbytes)) for k in ("concord-tcp", "concord-shm", "raw-ring", "raw-cold", "mpi-shm"))
        peers = [by[(k, nbytes)] for k in TCP_PEERS if (k, nbytes) in by]
        best = max(peers, key=lambda m: m["busbw"]) if peers else None
        ratio = lambda a, b: f"{a['busbw'] / b['busbw']:.2f}" if a and b else "-"
        tail = (f" {ratio(c, best):>6} {('(' + best['system'] + ')') if best else '':<14}"
                f" {ratio(c, raw):>6} {ratio(c, cold):>6} {ratio(shm, mpishm):>7}")
        if has_cpu:
            tail += f" {fmt_time(c['cpu_us']) if c and 'cpu_us' in c else '-':>9}"
        lines.append(f"{size_label(nbytes):>6} |" + "".join(cells) + tail)
    lines.append("# us = time per call (slowest rank's average); GB/s = busbw = bytes/time * 2(n-1)/n.")
    lines.append("# C/peer = Concord TCP busbw / the best TCP peer's (Gloo ring, chunked, HD, MPI TCP); C/raw =")
    lines.append("# Concord TCP / the raw TCP ring (the ring's physical limit, its buffers in cache; its us is")
    lines.append("# the time its busbw implies); C/cold = Concord TCP / the raw ring over tensor-sized buffers")
    lines.append("# (the limit for a tensor's own bytes); shm/MPI = Concord shm / MPI shm. Above 1: Concord is faster.")
    if has_cpu:
        lines.append("# C cpu us = Concord TCP's CPU time per call (concord-bench's cpuMicroseconds).")
    return "\n".join(lines)


def svg_plot(med, ns):
    """busbw (linear) against size (log), one panel per N, one polyline per system, legend underneath.
    Sizes are powers of 4, so equal steps on the x axis are a log scale."""
    colors = {"concord-tcp": "#d62728", "concord-shm": "#ff7f0e", "gloo-ring": "#1f77b4", "gloo-chunked": "#17becf",
              "gloo-hd": "#9467bd", "mpi-tcp": "#2ca02c", "mpi-shm": "#8c564b", "raw-ring": "#555555",
              "raw-cold": "#aaaaaa"}
    pw, ph, ml, mr, mt, mb = 440, 300, 60, 20, 40, 50  # panel size and margins
    width = len(ns) * (pw + ml + mr)
    columns = max(2, (width - ml) // 170)  # legend entries per line
    height = mt + ph + mb + 30 + 22 * -(-len(SYSTEMS) // columns)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, n in enumerate(ns):
        rows = [m for m in med if m["ranks"] == n]
        top = max([m["busbw"] for m in rows] + [0.1])
        step = next(s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if top / s <= 6)
        ymax = step * (int(top / step) + 1)
        x0, y0 = i * (pw + ml + mr) + ml, mt
        x = lambda b: x0 + pw * SIZES.index(b) / (len(SIZES) - 1)
        y = lambda v: y0 + ph - ph * v / ymax
        out.append(f'<text x="{x0 + pw / 2}" y="{y0 - 15}" text-anchor="middle" font-size="14" '
                   f'font-weight="bold">N = {n} ranks (float32 sum, loopback)</text>')
        out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
        for k in range(int(round(ymax / step)) + 1):
            v = k * step
            out.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{x0 - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        for b in SIZES:
            out.append(f'<line x1="{x(b):.1f}" x2="{x(b):.1f}" y1="{y0 + ph}" y2="{y0 + ph + 5}" stroke="black"/>')
            out.append(f'<text x="{x(b):.1f}" y="{y0 + ph + 18}" text-anchor="middle">{size_label(b)}</text>')
        out.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph + 38}" text-anchor="middle">size (bytes, log scale)</text>')
        out.append(f'<text transform="translate({x0 - 42},{y0 + ph / 2}) rotate(-90)" '
                   f'text-anchor="middle">busbw (GB/s)</text>')
        for key, _ in SYSTEMS:
            pts = [(x(m["bytes"]), y(m["busbw"])) for m in sorted(rows, key=lambda m: m["bytes"])
                   if m["system"] == key and m["bytes"] in SIZES]
            if not pts:
                continue
            dash = ' stroke-dasharray="6 4"' if key in RAW_RINGS else ""
            wide = 3 if key.startswith("concord") else 1.8
            out.append(f'<polyline fill="none" stroke="{colors[key]}" stroke-width="{wide}"{dash} points="'
                       + " ".join(f"{px:.1f},{py:.1f}" for px, py in pts) + '"/>')
            out += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colors[key]}"/>' for px, py in pts]
    for j, (key, label) in enumerate(SYSTEMS):  # legend underneath, `columns` entries per line
        lx, ly = ml + (j % columns) * 170, mt + ph + mb + 20 + (j // columns) * 22
        dash = ' stroke-dasharray="6 4"' if key in RAW_RINGS else ""
        out.append(f'<line x1="{lx}" x2="{lx + 30}" y1="{ly}" y2="{ly}" stroke="{colors[key]}" stroke-width="3"{dash}/>')
        out.append(f'<text x="{lx + 36}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- main

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description="Concord next to Gloo and Open MPI (float32 sum allreduce, loopback).")
    p.add_argument("--bin", required=True, help="directory holding concord and concord-bench")
    p.add_argument("--baselines", default=os.path.join(here, "..", "..", ".build-baselines"),
                   help="directory holding gloo_allreduce and mpi_allreduce")
    p.add_argument("--out", default="compare-results", help="output directory (default: compare-results)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each keeps the median (default 3)")
    p.add_argument("--ranks", default="2,4", help="comma-separated N (default 2,4)")
    p.add_argument("--systems", default=",".join(k for k, _ in SYSTEMS if k not in RAW_RINGS),
                   help="comma-separated subset (default: all; the raw rings come with concord-tcp)")
    p.add_argument("--row-seconds", type=float, default=0.25,
                   help="time a row should take from round 2 on, which sets its iterations (default 0.25)")
    p.add_argument("--timeout", type=float, default=120, help="seconds allowed for one run of one sweep")
    args = p.parse_args()
    ns = [int(n) for n in args.ranks.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in LABEL or s in RAW_RINGS:
            p.error(f"unknown system {s}")
    sweeps = SWEEPS
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    runner = Runner(args, args.out)

    load = os.getloadavg()[0]
    if load > 0.5 * os.cpu_count():
        print(f"warning: the machine is busy (load {load:.1f} on {os.cpu_count()} CPUs): expect noisy numbers")
    runs, samples = [], []
    iterations = {}  # (system, n, sweep) -> iterations for the next round
    start = time.monotonic()
    cpu_before = cpu_snapshot()
    try:
        for r in range(1, args.rounds + 1):
            for n in ns:
                for system in systems:
                    for lo, hi, first, fewest in sweeps:
                        iters = iterations.get((system, n, lo), first)
                        warm = max(2, iters // 10)
                        tag = f"r{r}-n{n}-{system}-{lo}-{hi}"
                        t0 = time.monotonic()
                        error, rows = runner.run(system, n, (lo, hi, iters, warm), tag)
                        seconds = time.monotonic() - t0
                        for row in rows:
                            row.update(round=r, iters=iters)
                        samples += rows
                        runs.append({"round": r, "ranks": n, "system": system, "sizes": [lo, hi], "iters": iters,
                                     "warmup": warm, "seconds": round(seconds, 3), "rows": len(rows), "error": error})
                        # One iteration of the slowest size (concord-tcp: Concord plus its raw ring).
                        per_size = {}
                        for row in rows:
                            per_size[row["bytes"]] = per_size.get(row["bytes"], 0) + row["time_us"]
                        if per_size and not error:
                            want = int(args.row_seconds * 1e6 / max(per_size.values()))
                            iterations[(system, n, lo)] = min(MOST_ITERATIONS, max(fewest, want))
                        status = f"FAILED: {error}" if error else f"{sum(row['system'] == system for row in rows)} rows"
                        print(f"[{time.monotonic() - start:6.1f}s] round {r}/{args.rounds} N={n} {system:<12} "
                              f"{lo:>4}-{hi:<4} x{iters:<5}: {seconds:5.1f}s, {status}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
    finally:
        shutil.rmtree(runner.tmp, ignore_errors=True)

    med = medians(samples)
    tables = "\n\n".join(table(n, med, args.rounds) for n in ns)
    failures = [run for run in runs if run["error"]]
    print("\n" + tables)
    if failures:
        print(f"\n{len(failures)} run(s) failed:")
        for f in failures:
            print(f"  round {f['round']} N={f['ranks']} {f['system']} {f['sizes'][0]}-{f['sizes'][1]}: {f['error']}")
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "kernel": platform.release(), "rounds": args.rounds, "ranks": ns,
            "sweeps": [list(s) for s in SWEEPS], "row_seconds": args.row_seconds, "load_before": load,
            "mpi_shm_btl": runner.shm_btl, "seconds": round(time.monotonic() - start, 1),
            "noise": noise(cpu_before, cpu_snapshot())}
    if meta["noise"]:
        steal, others = meta["noise"]["steal"], meta["noise"]["others"]
        print(f"during the runs the host stole {100 * steal:.0f}% of the CPU and other processes used {100 * others:.0f}%"
              + (": expect noisy numbers" if steal > 0.1 or others > 0.1 else ""))
    paths = {name: os.path.join(args.out, name) for name in ("compare.json", "compare.txt", "compare.svg")}
    with open(paths["compare.json"], "w") as f:
        json.dump({"meta": meta, "runs": runs, "samples": samples, "medians": med}, f, indent=1)
    with open(paths["compare.txt"], "w") as f:
        f.write(tables + "\n")
    with open(paths["compare.svg"], "w") as f:
        f.write(svg_plot(med, ns))
    print(f"\nwrote {', '.join(paths.values())} and {os.path.join(args.out, 'logs')}/ "
          f"({meta['seconds']:.0f} s)")
    return 1 if not samples else 0


if __name__ == "__main__":
    sys.exit(main())
