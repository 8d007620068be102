#!/usr/bin/env python3
"""legampi's own chaos test: random SIGKILLs while files are in flight, a rerun after each, an audit.

    python tests/chaos.py --kills 50 --backend both [--seed N]

Each round starts `mpiexec -n 3 legampi process` (or, for a `recover` kill, `legampi recover` alone
on what the previous kill left) and SIGKILLs rank 0, a worker rank, mpiexec itself or recover when an
observable trigger fires (a claim, a temp file in end_storage, an archived copy whose row is not
committed yet, a commit, the first change recovery makes, or a delay drawn from the timings measured
on the dataset). The next round is the rerun. At the end one unkilled `legampi recover` and one
`mpiexec -n 3 legampi process` run, and tests/chaos_audit.py checks every file. The seed fixes the
whole schedule (targets, triggers, their parameters, the dataset's sizes); see docs/chaos.md.
Exit status: 0 when the audit is clean, 1 when it found problems, 2 when the harness itself failed.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from legampi import archive  # noqa: E402
from tests.chaos_audit import run_audit  # noqa: E402
from tests.chaos_plan import TARGETS, Calibration, Kill, Spec, schedule  # noqa: E402
from tests.chaos_procs import Procs, become_subreaper, ranks  # noqa: E402
from tests.chaos_world import (  # noqa: E402
    EXTS,
    Observer,
    Wave,
    backend_workspace,
    has_traceback,
    make_wave,
    monitor_until_moved,
    tail,
    temp_owner,
)
from tests.conftest import LEGAMPI, MPIEXEC, Workspace  # noqa: E402

POLL = 0.004  # seconds between two looks at the observable state
JOB_TIMEOUT = 120.0  # a job (killed or not) must be entirely gone within this


class Chaos:
    def __init__(self, ws: Workspace, backend: str, seed: int, kills: int, ranks_n: int, large_mb: tuple[int, int]):
        self.ws, self.backend, self.seed, self.target_kills = ws, backend, seed, kills
        self.ranks_n, self.large_mb = ranks_n, large_mb
        self.rng = random.Random(seed)
        self.specs = schedule(self.rng, kills)
        self.procs = Procs(ws.root / "logs")
        (ws.root / "logs").mkdir()
        self.cal = Calibration()
        self.registered: dict[str, dict] = {}
        self.archive_to_name: dict[str, str] = {}
        self.waves: list[Wave] = []
        self.kills: list[Kill] = []
        self.misses: Counter = Counter()
        self.findings: list[str] = []  # crashes, hangs, survivors seen during the loop
        self.obs: Observer | None = None
        self.orphans: dict[str, str] = {}

    # ------------------------------------------------------------------ dataset
    def add_wave(self) -> None:
        wave = make_wave(self.ws, len(self.waves), random.Random(f"{self.seed}-wave-{len(self.waves)}"), self.large_mb)
        monitor_until_moved(self.ws, wave)
        self.waves.append(wave)
        for e in wave.entries:
            self.registered[e["name"]] = {"md5": e["md5"], "sha256": e["sha256"], "dataset": wave.dataset}
            self.archive_to_name[archive.archive_name(e["name"], EXTS)] = e["name"]
        self.say(f"wave {wave.dataset}: {len(wave.entries)} files, {wave.bytes / 1e6:.1f} MB registered and monitored")

    def say(self, text: str) -> None:
        print(f"[{self.backend}] {text}", flush=True)

    # ------------------------------------------------------------------ runs
    def start_process(self, tag: str):
        cmd = [MPIEXEC, "-n", str(self.ranks_n), LEGAMPI, "-c", str(self.ws.config), "process"]
        return self.procs.start(cmd, tag, self.ws.root)

    def start_recover(self, tag: str):
        return self.procs.start([LEGAMPI, "-c", str(self.ws.config), "recover"], tag, self.ws.root)

    def finish(self, job, what: str, killed: bool) -> int | None:
        rc, survivors = self.procs.wait_gone(job, JOB_TIMEOUT)
        out, err = job.logs
        if survivors:
            self.findings.append(f"{what}: processes {survivors} still alive {JOB_TIMEOUT}s after; SIGKILLed ({err})")
        if not killed and rc != 0:
            self.findings.append(f"{what}: unkilled run exited {rc} ({err}):\n{tail(err)}\n{tail(out)}")
        elif not killed and has_traceback(err):
            self.findings.append(f"{what}: unkilled run printed a traceback ({err}):\n{tail(err, 30)}")
        return rc

    def calibrate(self) -> None:
        """One unkilled job on the first wave and one unkilled recover: the timings of the time triggers."""
        assert self.obs is not None
        _, nbytes = self.obs.remaining()
        c0, t0 = self.obs.events()["claimed"], time.monotonic()
        job, t_claim = self.start_process("calibrate"), None
        while job.poll() is None:
            if t_claim is None and self.obs.events()["claimed"] > c0:
                t_claim = time.monotonic() - t0
            time.sleep(POLL)
        t_end = time.monotonic() - t0
        if self.finish(job, "calibration job", killed=False) != 0:
            raise RuntimeError(f"the calibration job failed: {tail(job.logs[1])}")
        t_claim = t_claim or t_end / 2
        self.cal.t_claim.append(t_claim)
        self.cal.rate.append(nbytes / max(t_end - t_claim, 1e-3))
        t0 = time.monotonic()
        rec = self.start_recover("calibrate-recover")
        self.finish(rec, "calibration recover", killed=False)
        self.cal.t_recover.append(time.monotonic() - t0)
        self.say(
            f"calibrated: claims {t_claim:.2f}s after start, {self.cal.rate[0] / 1e6:.0f} MB/s, "
            f"recover alone {self.cal.t_recover[0]:.2f}s"
        )

    # ------------------------------------------------------------------ one round
    def process_round(self, spec: Spec, tag: str) -> Kill | None:
        """Start a job, SIGKILL spec.target when spec.trigger fires; None when the job ended first."""
        obs = self.obs
        assert obs is not None
        ev0, jobs0 = obs.events(), obs.job_ids()
        temps0, unrecorded0 = set(obs.temps()), set(obs.archived_unrecorded())  # debris of earlier kills
        temps_seen: set[Path] = set()
        bytes0 = obs.remaining()[1]
        delay = self.cal.process_delay(spec.u, bytes0)
        t0 = time.monotonic()
        job, t_claim, commits, last_available = self.start_process(tag), None, 0, ev0["available"]
        while job.poll() is None:
            now = time.monotonic() - t0
            ev = obs.events()
            if t_claim is None and ev["claimed"] > ev0["claimed"]:
                t_claim = now
            if ev["available"] > last_available:  # one more batch committed
                commits, last_available = commits + 1, ev["available"]
            temps = [t for t in obs.temps() if t not in temps0]  # this job's
            new = [t for t in temps if t not in temps_seen]
            temps_seen |= set(temps)
            t = spec.trigger
            fired = (
                (t == "job-start" and len(obs.job_ids()) > len(jobs0))
                or (t == "claimed" and ev["claimed"] > ev0["claimed"])
                or (t == "temp" and len(temps_seen) >= spec.k and bool(temps))
                or (t == "archived" and bool(set(obs.archived_unrecorded()) - unrecorded0))
                or (t == "committed" and commits >= spec.k and self._claims_of_new_jobs(jobs0) > 0)
                or (t == "time" and t_claim is not None and now >= t_claim + delay)
            )
            if fired:
                pid, what = self._victim(spec, job, (new or temps) if t == "temp" else [])
                if pid is not None:
                    kill = self._kill(spec, job, pid, what, now, tag, jobs0, temps0)
                    if kill is not None:
                        return kill
            time.sleep(POLL)
        t_end = time.monotonic() - t0
        self.finish(job, f"{tag} (its trigger {spec} never fired)", killed=False)
        done = bytes0 - obs.remaining()[1]
        if t_claim is not None and done > 0:  # a whole job: one more sample of the real throughput
            self.cal.t_claim.append(t_claim)
            self.cal.rate.append(done / max(t_end - t_claim, 1e-3))
        return None

    def _claims_of_new_jobs(self, jobs0: set[str]) -> int:
        assert self.obs is not None
        return sum(n for j, n in self.obs.claims().items() if j not in jobs0)

    def _victim(self, spec: Spec, job, temps: list[Path]) -> tuple[int | None, str]:
        if spec.target == "mpiexec":
            return job.pid, "mpiexec"
        rk = ranks(job)
        if spec.target == "rank0":
            return rk.get(0), "rank 0"
        workers = {pid: r for r, pid in rk.items() if r != 0}
        for t in temps:  # the rank writing the temp file that fired the trigger
            owner = temp_owner(t)
            if owner in workers:
                return owner, f"rank {workers[owner]} (writing {t.name})"
        if len(workers) < self.ranks_n - 1:
            return None, ""  # not every worker has started yet
        order = sorted(workers, key=lambda p: workers[p])
        pid = order[int(spec.pick * len(order))]
        return pid, f"rank {workers[pid]}"

    def _kill(
        self, spec: Spec, job, pid: int, what: str, at: float, tag: str, jobs0: set[str], temps0: set[Path]
    ) -> Kill | None:
        """SIGKILL PID; the kill counts only if work was in flight: a temp file in end_storage, rows
        claimed by this job, or this job's rank 0 started while a dead job's claims await recovery."""
        obs = self.obs
        assert obs is not None
        temps, claims, started = len(set(obs.temps()) - temps0), obs.claims(), bool(obs.job_ids() - jobs0)
        if not self.procs.kill(pid):
            return None  # it ended on its own just now: keep watching the job
        mine = sum(n for j, n in claims.items() if j not in jobs0)
        stale = sum(claims.values()) - mine
        k = Kill(
            len(self.kills) + 1,
            spec,
            pid,
            what,
            at,
            f"{temps} new temp file(s), {mine} row(s) claimed by this job, {stale} stale claim(s)"
            + ("" if started else ", job row not written yet"),
        )
        t_kill = time.monotonic()
        k.rc = self.finish(job, f"{tag} after {what} was killed", killed=True)
        k.notes.append(f"every process of the job gone {time.monotonic() - t_kill:.2f}s after the kill")
        if not (temps or mine or (started and stale)):
            k.notes.append("NOT IN FLIGHT: not counted")
        elif spec.target == "mpiexec" and k.rc != -signal.SIGKILL:
            k.notes.append("NOT IN FLIGHT: mpiexec had already ended; not counted")
        return k

    def recover_round(self, spec: Spec, tag: str) -> Kill | None:
        obs = self.obs
        assert obs is not None
        debris = obs.debris()
        before = obs.snapshot()
        changes, last = 0, before
        t0 = time.monotonic()
        job = self.start_recover(tag)
        while job.poll() is None:
            now = time.monotonic() - t0
            snap = obs.snapshot()
            if snap != last:
                changes, last = changes + 1, snap
            if changes >= spec.k and self.procs.kill(job.pid):
                k = Kill(len(self.kills) + 1, spec, job.pid, "legampi recover", now, "")
                k.evidence = f"{len(debris)} thing(s) to recover, {changes} observed change(s) so far"
                k.rc = self.finish(job, f"{tag} after recover was killed", killed=True)
                if k.rc != -signal.SIGKILL:
                    k.notes.append("NOT IN FLIGHT: recover had already ended; not counted")
                return k
            time.sleep(POLL)
        self.finish(job, f"{tag} (recover ended before its trigger {spec})", killed=False)
        self.cal.t_recover.append(time.monotonic() - t0)
        return None

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        self.obs = Observer(self.ws, self.archive_to_name)
        self.add_wave()
        self.calibrate()
        self.add_wave()
        i, rounds, retries, tag = 0, 0, Counter(), "setup"
        while len(self.kills) < self.target_kills:
            if rounds:
                self.check_orphans(f"round {rounds} ({tag}, kills so far: {len(self.kills)})")
            if i >= len(self.specs):  # skipped specs are replaced by further draws of the same RNG
                self.specs += schedule(self.rng, self.target_kills - len(self.kills))
            spec = self.specs[i]
            if spec.target == "recover" and not self.obs.debris():  # nothing to recover: kill something else first
                j = next((j for j in range(i + 1, len(self.specs)) if self.specs[j].target != "recover"), None)
                if j is None:
                    self.specs.append(schedule(self.rng, 4)[0])
                else:
                    self.specs.insert(i, self.specs.pop(j))
                continue
            rounds += 1
            tag = f"r{rounds:03d}-{spec.target}-{spec.trigger}"
            if spec.target == "recover":
                kill = self.recover_round(spec, tag)
            else:
                files, nbytes = self.obs.remaining()
                if files < 6 or nbytes < 2 * self.large_mb[0] * (1 << 20):
                    self.add_wave()
                kill = self.process_round(spec, tag)
            if kill is None or any(n.startswith("NOT IN FLIGHT") for n in kill.notes):
                self.say(kill.line(self.backend) if kill else f"round {rounds}: {spec} missed (it ended first)")
                self.misses[spec.target] += 1
                retries[i] += 1
                if retries[i] < 3:
                    continue  # the same spec again (the run that missed was itself a rerun)
                self.say(f"spec {spec} missed 3 times; skipped")
                i += 1
                continue
            self.kills.append(kill)
            self.say(kill.line(self.backend))
            i += 1
        self.check_orphans(f"round {rounds} ({tag}, the last)")
        self.final_rerun()

    def check_orphans(self, after: str) -> None:
        """Report, once each and right away, rows claimed by no job (stuck until claim_timeout)."""
        assert self.obs is not None
        for name, who in self.obs.orphan_claims().items():
            if name not in self.orphans:
                self.orphans[name] = who
                self.findings.append(
                    f"after {after}: {name} is claimed by {who!r}, which is no job in the job table: no run "
                    "releases it before claim_timeout; the file is stuck"
                )
                self.say("FINDING " + self.findings[-1])

    def final_rerun(self) -> None:
        rec = self.start_recover("final-recover")
        self.finish(rec, "final recover", killed=False)
        self.say("final recover:\n" + tail(rec.logs[0], 40))
        job = self.start_process("final-process")
        self.finish(job, "final process", killed=False)
        out = job.logs[0].read_text(errors="replace")
        m = re.search(r"^job (\S+): ", out, re.M)
        self.final_job = m.group(1) if m else None
        self.say("final process: " + (out.splitlines()[0] if out else "(no output)"))

    def report(self) -> bool:
        audit = run_audit(self.ws, self.registered, self.final_job)
        by_target = Counter(k.spec.target for k in self.kills)
        by_trigger = Counter(k.spec.trigger for k in self.kills)
        lines = [
            f"seed {self.seed}: {len(self.kills)} kills on {self.backend} "
            f"({', '.join(f'{t} {by_target[t]}' for t in TARGETS)}); by trigger: {dict(by_trigger)}; "
            f"missed (job or recover ended before the trigger, or not in flight): {dict(self.misses)}",
            f"{len(self.waves)} wave(s), {len(self.registered)} files, {sum(w.bytes for w in self.waves) / 1e6:.0f} MB",
            *audit.lines(),
            *[f"  FINDING during the loop: {f}" for f in self.findings],
        ]
        for line in lines:
            self.say(line)
        self.result = {
            "backend": self.backend,
            "kills": len(self.kills),
            "by_target": dict(by_target),
            "files": len(self.registered),
            "lost": len(audit.lost),
            "duplicated": len(audit.duplicated),
            "corrupt": len(audit.corrupt),
            "unfinished": len(audit.unfinished),
            "other": len(audit.other),
            "loop_findings": len(self.findings),
        }
        return audit.ok and not self.findings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50, help="SIGKILLs per backend that land in flight (default 50)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--seed", type=int, default=None, help="reproduce a run's schedule (printed at the start)")
    ap.add_argument("-n", "--ranks", type=int, default=3, help="mpiexec -n (default 3)")
    ap.add_argument("--large-mb", default="4-32", help="size range in MiB of the larger files (default 4-32)")
    ap.add_argument("--keep", action="store_true", help="keep the workspaces (and PG schemas) for debugging")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    lo, _, hi = args.large_mb.partition("-")
    large = (int(lo), int(hi or lo))
    print(f"chaos seed {seed} (reproduce the schedule with --seed {seed})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the cleanups below
    become_subreaper()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    ok, results, t_start = True, [], time.monotonic()
    for backend in backends:
        t0 = time.monotonic()
        with backend_workspace(backend, keep=args.keep) as ws:
            chaos = Chaos(ws, backend, seed, args.kills, args.ranks, large)
            try:
                chaos.run()
                good = chaos.report()
            except BaseException:
                print(f"[{backend}] harness error with seed {seed}; kill log so far:", flush=True)
                for k in chaos.kills:
                    print(f"  [{backend}] " + k.line(backend), flush=True)
                raise
            finally:
                if chaos.obs is not None:
                    chaos.obs.close()
                left = chaos.procs.cleanup()
                if left:
                    print(f"[{backend}] cleanup SIGKILLed leftover processes {left}", flush=True)
            if not good:
                print(
                    f"[{backend}] FAILED with seed {seed} (replay: --seed {seed}; add --keep to inspect); kill log:",
                    flush=True,
                )
                for k in chaos.kills:
                    print(f"  [{backend}] " + k.line(backend), flush=True)
            results.append({**chaos.result, "seconds": round(time.monotonic() - t0, 1)})
            ok &= good
    for r in results:
        print("RESULT " + " ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    print(f"chaos seed {seed}: {'PASSED' if ok else 'FAILED'} in {time.monotonic() - t_start:.0f}s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - a harness failure is exit 2, with its traceback
        import traceback

        traceback.print_exc()
        print(f"chaos harness error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
