#!/usr/bin/env python3
"""Scaling model: how fast one legampi job can go with W worker ranks, and which limit stops it.

A bottleneck (operational-law) model, the analytic form of a discrete-event simulation of the dispatch
loop: every file passes through a worker (streaming + its per-file fsyncs and metadata operations), rank 0's
loop thread (receive the result, hand out the next file, queue the result), rank 0's recorder thread
(record the row, remove the source; --inline-recorder: both on the loop thread, as before issue 18),
rank 0's GIL (the two threads' CPU together), the tracking database
(rows committed in batches), the parallel filesystem's metadata server (namespace operations and
directory fsyncs) and the filesystem's bandwidth (every byte read once and written once). Each is a
server with a capacity; a job's makespan is at least the demand on each divided by its capacity, and at
least the largest file's time on one core (largest-first dispatch reaches that bound, docs/benchmarks.md).
Throughput(W) = data / max(those times). The rank count where the workers' aggregate rate meets the
first ceiling is where a single job stops scaling.

Calibration: rank 0's CPU per result and the database's rows/s come from `rank0_scaling.py` (pass its
JSON with --calibration), per-core crypto throughput and the per-file fixed cost from docs/benchmarks.md;
filesystem figures are assumptions, stated in CLUSTER and docs/scaling.md.

    python benchmarks/scaling_model.py                       # tables for every dataset mix
    python benchmarks/scaling_model.py --calibration benchmarks/results/rank0_scaling-*.json --svg docs/scaling.svg
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

KIB, MIB, GB = 1024, 1024 * 1024, 10**9


@dataclass
class Calibration:
    """Measured costs (defaults: docs/scaling.md's figures; --calibration reads a rank0_scaling JSON)."""

    # rank 0, per result, CPU seconds on the development VM's core (rank0_scaling.py --recorder
    # thread,inline; docs/scaling.md's calibration): the loop thread's messages and its per-file part
    r0_msg_s: float = 0.10e-3  # per message: probe, receive, hand out, doorbells, progress
    r0_file_s: float = 0.05e-3  # per file on the loop thread: summary, queue, GIL waits (inline: log line)
    r0_rec_cpu_s: float = 0.075e-3  # the recorder thread's CPU per file (log line, SQL, unlink calls)
    r0_db_s: float = 1 / 4400  # the batch write, wall per row (the writing thread waits for the commit)
    files_per_message: float = 1.0  # hand-outs per TASKS message in steady state (measured: 1)
    unlink_off_rank0: bool = True  # issue 18: sources removed on the recorder thread, UNLINK_THREADS at once
    db_overlapped: bool = True  # issue 18: the batch write on the recorder thread, overlapped with messaging
    unlink_threads: int = 8  # legampi.recorder.UNLINK_THREADS
    # workers: per-core streaming rate (legampi full mode, 418 MB/s over 2 workers) and the CPU part of
    # a file's fixed cost (bookkeeping.py: 1,265 files/s with 2 workers on 2 cores = 1.6 ms per file)
    core_bytes_per_s: float = 209e6
    worker_fixed_cpu_s: float = 1.6e-3
    # database: PostgreSQL record_results alone, batches of 200, no MPI (SQLite: 12,600; docs/scaling.md)
    db_rows_per_s: float = 4400.0


@dataclass
class Cluster:
    """The site: assumptions, not measurements (docs/scaling.md says why each figure)."""

    nodes: int = 100
    ranks_per_node: int = 20
    mds_ops_per_s: float = 25_000.0  # half of one Lustre MDT's ~50k namespace ops/s (mdtest class figure)
    mds_op_latency_s: float = 0.3e-3  # one synchronous metadata RPC (open/create/link/unlink) from a client
    fsync_latency_s: float = 1.0e-3  # an fsync on the parallel filesystem (data to the OSTs, commit)
    fs_bytes_per_s: float = 50e9  # the job's share of the filesystem's aggregate bandwidth (read + write)
    node_bytes_per_s: float = 12.5e9  # one 100 Gb/s NIC per node, each direction
    # per archived file: open source, create temp, link final, unlink temp, sidecar create/link/unlink,
    # directory fsync (worker) + unlink source (rank 0)  -> 9 metadata operations; 2 data fsyncs
    worker_md_ops: int = 8
    worker_fsyncs: int = 2
    rank0_md_ops: int = 1  # rank 0 unlinks each source after its row commits (plus one dir fsync per batch)


@dataclass
class Mix:
    """A dataset: file sizes (bytes) sampled reproducibly, scaled up to COUNT files."""

    name: str
    count: int
    sizes: list[int] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.sizes) * self.count / len(self.sizes)

    @property
    def largest(self) -> int:
        return max(self.sizes)


def log_uniform(rng: random.Random, lo: float, hi: float) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def mixes(sample: int = 20_000) -> list[Mix]:
    """Small-file-heavy to BAM-heavy (each a sample of SAMPLE sizes standing for COUNT files)."""
    rng = random.Random(18)

    def make(name: str, count: int, draw) -> Mix:
        return Mix(name, count, [draw() for _ in range(min(sample, count))])

    def bam_or_small(p_bam: float, bam: tuple[float, float], small: tuple[float, float]):
        return lambda: log_uniform(rng, *bam) if rng.random() < p_bam else log_uniform(rng, *small)

    return [
        make("small-file-heavy: 5M files of 1-100 KiB", 5_000_000, lambda: log_uniform(rng, KIB, 100 * KIB)),
        make(
            "mixed: 1M files, 0.1% BAMs of 50-300 GB, rest 1 KiB-10 MB",
            1_000_000,
            bam_or_small(0.001, (50 * GB, 300 * GB), (KIB, 10 * MIB)),
        ),
        make(
            "per-sample: 40k files, 1 in 4 a 5-50 GB BAM, rest 1-100 MB",
            40_000,
            bam_or_small(0.25, (5 * GB, 50 * GB), (MIB, 100 * MIB)),
        ),
        make("BAM-heavy: 3,000 files of 50-300 GB", 3_000, lambda: log_uniform(rng, 50 * GB, 300 * GB)),
    ]


def worker_seconds(size: float, cal: Calibration, site: Cluster) -> float:
    """One file on one worker. A worker streams file N+1 while file N's tail (data fsync, link into
    place, sidecar, folder fsync) runs in a thread (stream.process_file_overlapped), so a file costs the
    longer of the two: streaming (bytes, fixed CPU, open + create RPCs) or its tail (fsyncs, RPCs)."""
    stream = size / cal.core_bytes_per_s + cal.worker_fixed_cpu_s + 2 * site.mds_op_latency_s
    tail = site.worker_fsyncs * site.fsync_latency_s + (site.worker_md_ops - 2) * site.mds_op_latency_s
    return max(stream, tail)


def rank0_seconds_per_file(cal: Calibration, site: Cluster) -> float:
    """Rank 0's loop thread: message handling, plus (inline recorder) the batch write and the unlink."""
    per_msg = cal.r0_msg_s / max(cal.files_per_message, 1.0)
    unlink = 0.0 if cal.unlink_off_rank0 else site.rank0_md_ops * site.mds_op_latency_s
    db = 0.0 if cal.db_overlapped else cal.r0_db_s
    return per_msg + cal.r0_file_s + db + unlink


def recorder_seconds_per_file(cal: Calibration, site: Cluster) -> float:
    """Rank 0's recorder thread: waits for each batch's commit, then unlinks UNLINK_THREADS at a time."""
    if not (cal.unlink_off_rank0 or cal.db_overlapped):
        return 0.0
    unlink = site.rank0_md_ops * site.mds_op_latency_s / max(cal.unlink_threads, 1) if cal.unlink_off_rank0 else 0
    return (cal.r0_db_s if cal.db_overlapped else 0.0) + unlink + cal.r0_rec_cpu_s


def gil_seconds_per_file(cal: Calibration) -> float:
    """Rank 0's two threads share one interpreter lock: their CPU together is one core's worth."""
    rec = cal.r0_rec_cpu_s if (cal.unlink_off_rank0 or cal.db_overlapped) else 0.0
    return cal.r0_msg_s / max(cal.files_per_message, 1.0) + cal.r0_file_s + rec


def limits(mix: Mix, cal: Calibration, site: Cluster) -> dict[str, float]:
    """Each ceiling as a minimum makespan in seconds (independent of W except 'workers' and 'nodes')."""
    n, total = mix.count, mix.total
    return {
        "rank 0's loop thread (messages; inline recorder: + batch write + unlink)": n
        * rank0_seconds_per_file(cal, site),
        "rank 0's recorder thread (commit wait + unlinks)": n * recorder_seconds_per_file(cal, site),
        "rank 0's GIL (both threads' CPU)": n * gil_seconds_per_file(cal),
        "database commit rate": n / cal.db_rows_per_s,
        "metadata server": n * (site.worker_md_ops + 1 + site.rank0_md_ops) / site.mds_ops_per_s,
        "filesystem bandwidth": 2 * total / site.fs_bytes_per_s,
        "largest file on one core": worker_seconds(mix.largest, cal, site),
    }


_WORK: dict[tuple[int, int, int], float] = {}  # total worker-seconds per (mix, calibration, site)


def makespan(mix: Mix, ranks: int, cal: Calibration, site: Cluster) -> tuple[float, str]:
    """(seconds, the binding limit) for a job of RANKS ranks (rank 0 + RANKS-1 workers)."""
    w = max(ranks - 1, 1)
    key = (id(mix), id(cal), id(site))
    if key not in _WORK:
        _WORK[key] = mix.count * sum(worker_seconds(s, cal, site) for s in mix.sizes) / len(mix.sizes)
    work = _WORK[key]
    nodes = max(1, math.ceil(ranks / site.ranks_per_node))
    times = {"workers": work / w, "node NICs": mix.total / (nodes * site.node_bytes_per_s)}
    times.update(limits(mix, cal, site))
    name = max(times, key=lambda k: times[k])
    return times[name], name


def knee(mix: Mix, cal: Calibration, site: Cluster, max_ranks: int = 2000) -> tuple[int, str]:
    """The rank count where adding workers stops helping: the first rank count at which something other
    than the workers binds (past it, throughput is flat). max_ranks if the workers bind throughout."""
    for r in range(2, max_ranks + 1):
        _t, name = makespan(mix, r, cal, site)
        if name not in ("workers",):
            return r, name
    return max_ranks, "workers (still scaling)"


RANKS = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000]


def table(cal: Calibration, site: Cluster) -> list[dict]:
    out = []
    for mix in mixes():
        r, name = knee(mix, cal, site)
        rows = []
        for n in RANKS:
            t, lim = makespan(mix, n, cal, site)
            rows.append(
                {"ranks": n, "seconds": t, "bytes_per_s": mix.total / t, "files_per_s": mix.count / t, "limit": lim}
            )
        out.append(
            {
                "mix": mix.name,
                "files": mix.count,
                "bytes": mix.total,
                "knee_ranks": r,
                "knee_limit": name,
                "limits": limits(mix, cal, site),
                "curve": rows,
            }
        )
    return out


def load_calibration(path: Path, db: str, cal_threaded: bool = True) -> Calibration:
    """Rank 0's per-result CPU split and the database's rows/s from a rank0_scaling.py JSON."""
    data = json.loads(path.read_text(encoding="utf-8"))
    mode = "batched" if cal_threaded else "inline"  # rank0_scaling.py's modes; older JSON: inline
    cells = [c for c in data["results"] if c["db"] == db and not c["problems"] and c.get("mode", "inline") == mode]
    if not cells:
        raise SystemExit(f"{path}: no successful {db} rows in rank 0 mode {mode}")
    med = sorted(cells, key=lambda c: c.get("loop_ms_per_result", c["cpu_per_result_ms"]))[len(cells) // 2]
    # the batch write alone (no MPI) when the JSON has it; else the (oversubscribed) in-job figure
    alone = [r["rows_per_s"] for r in data.get("batch_write_alone", []) if r["db"] == db and not r["problems"]]
    rows = sorted(alone or [c["db_rows_per_s"] for c in cells if c.get("db_rows_per_s")])
    db_rate = rows[len(rows) // 2]
    per_file = med.get("file_cpu_per_result_ms")
    if "loop_ms_per_result" in med:  # the loop's per-file part includes its waits in the recorder (GIL, queue)
        per_file = max(med["loop_ms_per_result"] - med["msg_cpu_per_result_ms"], per_file or 0.0)
    return replace(
        Calibration(),
        r0_msg_s=med["msg_cpu_per_result_ms"] / 1000,
        r0_file_s=(per_file if per_file is not None else Calibration.r0_file_s * 1000) / 1000,
        r0_db_s=1 / db_rate,
        db_rows_per_s=db_rate,
        # results still come one per message; batched hand-outs are already in the measured message cost
        files_per_message=1.0,
        r0_rec_cpu_s=med.get("rec_cpu_per_result_ms", 0.0) / 1000,
        unlink_off_rank0=cal_threaded,
        db_overlapped=cal_threaded,
    )


def svg(results: list[dict], path: Path, title: str) -> None:
    """A log-log plot of throughput (MB/s) against ranks per mix, hand-written SVG (no matplotlib)."""
    w, h, ml, mr, mt, mb = 760, 440, 70, 260, 40, 50
    xs = [math.log10(n) for n in RANKS]
    ys = [math.log10(r["bytes_per_s"] / 1e6) for m in results for r in m["curve"]]
    x0, x1, y0, y1 = min(xs), max(xs), math.floor(min(ys)), math.ceil(max(ys))

    def px(n: float) -> float:
        return ml + (math.log10(n) - x0) / (x1 - x0) * (w - ml - mr)

    def py(v: float) -> float:
        return h - mb - (math.log10(v) - y0) / (y1 - y0) * (h - mt - mb)

    colours = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#9467bd"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{ml}" y="22" font-size="14">{title}</text>',
    ]
    for e in range(y0, y1 + 1):
        y = py(10**e)
        parts.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{w - mr}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{10**e:g}</text>')
    for n in RANKS:
        x = px(n)
        parts.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{h - mb}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{h - mb + 16}" text-anchor="middle">{n}</text>')
    parts.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 10}" text-anchor="middle">ranks (rank 0 + workers)</text>')
    parts.append(
        f'<text x="16" y="{(mt + h - mb) / 2}" transform="rotate(-90 16 {(mt + h - mb) / 2})" '
        f'text-anchor="middle">MB/s (plaintext, log)</text>'
    )
    for i, m in enumerate(results):
        c = colours[i % len(colours)]
        pts = " ".join(f"{px(r['ranks']):.1f},{py(r['bytes_per_s'] / 1e6):.1f}" for r in m["curve"])
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        k = m["knee_ranks"]
        # the knee sits on the curve's plateau (past the knee the throughput no longer grows)
        plateau = max(r["bytes_per_s"] for r in m["curve"])
        parts.append(f'<circle cx="{px(k):.1f}" cy="{py(plateau / 1e6):.1f}" r="4" fill="{c}"/>')
        ly = mt + 10 + 34 * i
        parts.append(f'<line x1="{w - mr + 12}" y1="{ly}" x2="{w - mr + 30}" y2="{ly}" stroke="{c}" stroke-width="2"/>')
        label = m["mix"].split(":")[0]
        parts.append(f'<text x="{w - mr + 36}" y="{ly + 4}">{label}: knee {k} ranks</text>')
        parts.append(f'<text x="{w - mr + 36}" y="{ly + 18}" font-size="10">({m["knee_limit"].split(" (")[0]})</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


CAL_IN_USE: list = [Calibration(), Cluster()]


def human_rate(b: float) -> str:
    return f"{b / 1e9:.1f} GB/s" if b >= 1e9 else f"{b / 1e6:.0f} MB/s"


def print_results(results: list[dict], heading: str) -> None:
    print(f"\n== {heading}")
    for m in results:
        print(f"\n{m['mix']}: {m['files']:,} files, {m['bytes'] / 1e12:.2f} TB")
        print(f"  stops scaling at {m['knee_ranks']} ranks: {m['knee_limit']}")
        print("  " + "  ".join(f"{k}: {v / 3600:.2f} h" for k, v in m["limits"].items()))
        print(f"  {'ranks':>6}  {'throughput':>11}  {'files/s':>9}  {'TB/day':>7}  binding limit")
        for r in m["curve"]:
            print(
                f"  {r['ranks']:>6}  {human_rate(r['bytes_per_s']):>11}  {r['files_per_s']:>9,.0f}  "
                f"{r['bytes_per_s'] * 86400 / 1e12:>7.1f}  {r['limit']}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calibration", type=Path, help="a rank0_scaling.py JSON (default: docs/scaling.md's figures)")
    p.add_argument("--db", default="postgresql", choices=["sqlite", "postgresql"], help="calibration rows to use")
    p.add_argument("--files-per-message", type=float, help="model batched hand-outs/results (the proposed fix)")
    p.add_argument("--mds-ops", type=float, help="metadata server ops/s available to the job")
    p.add_argument("--db-rows", type=float, help="database rows/s (the batch write's wall per row is 1/this)")
    p.add_argument(
        "--fixed",
        action="store_true",
        help="model the next proposed fix: 32 files per message (hand-outs and results batched)",
    )
    p.add_argument(
        "--inline-recorder",
        action="store_true",
        help="model rank 0 before issue 18: the batch write and source removal on the loop thread",
    )
    p.add_argument("--svg", type=Path, help="write the throughput plot here")
    p.add_argument("--json", type=Path, help="write every figure here")
    a = p.parse_args(argv)
    if a.calibration:
        cal = load_calibration(a.calibration, a.db, not a.inline_recorder)
    elif a.inline_recorder:  # docs/scaling.md's figures before issue 18 (log line on the loop thread)
        cal = Calibration(r0_file_s=0.05e-3, r0_rec_cpu_s=0.0, unlink_off_rank0=False, db_overlapped=False)
    else:
        cal = Calibration()
    site = Cluster()
    if a.mds_ops:
        site.mds_ops_per_s = a.mds_ops
    if a.db_rows:
        cal.db_rows_per_s, cal.r0_db_s = a.db_rows, 1 / a.db_rows
    if a.fixed:
        cal.files_per_message = 32.0
    if a.files_per_message:
        cal.files_per_message = a.files_per_message
    CAL_IN_USE[:] = [cal, site]
    print(
        f"calibration: rank 0 {1e3 * cal.r0_msg_s:.3f} ms/message + {1e3 * cal.r0_file_s:.3f} ms/file + "
        f"{1e3 * cal.r0_db_s:.3f} ms/row "
        f"batch write, {cal.files_per_message:g} file(s)/message; database {cal.db_rows_per_s:,.0f} rows/s; "
        f"worker {cal.core_bytes_per_s / 1e6:.0f} MB/s/core + {1e3 * cal.worker_fixed_cpu_s:.1f} ms/file CPU"
    )
    print(
        f"site: {site.nodes} nodes x {site.ranks_per_node} ranks, metadata {site.mds_ops_per_s:,.0f} ops/s "
        f"({1e3 * site.mds_op_latency_s:.1f} ms/RPC), fsync {1e3 * site.fsync_latency_s:.1f} ms, "
        f"filesystem {site.fs_bytes_per_s / 1e9:.0f} GB/s, NIC {site.node_bytes_per_s / 1e9:.1f} GB/s/node; "
        f"rank 0's loop thread {1e3 * rank0_seconds_per_file(cal, site):.2f} ms/file "
        f"= {1 / rank0_seconds_per_file(cal, site):,.0f} files/s"
        + (
            f", recorder thread {1e3 * recorder_seconds_per_file(cal, site):.2f} ms/file, "
            f"GIL {1e3 * gil_seconds_per_file(cal):.2f} ms/file"
            if cal.db_overlapped or cal.unlink_off_rank0
            else ""
        )
    )
    results = table(cal, site)
    print_results(results, "throughput against ranks (bottleneck model)")
    if a.svg:
        svg(results, a.svg, "legampi: one job's throughput against ranks (model)")
        print(f"\nSVG: {a.svg}")
    if a.json:
        a.json.write_text(json.dumps({"calibration": cal.__dict__, "site": site.__dict__, "mixes": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
