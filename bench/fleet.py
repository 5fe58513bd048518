"""A fleet of conversations against the client pool: throughput, memory, latency.

Starts the loopback model and ``vigil run`` with N jobs (default 1,000) sharing a pool
of ``max_live_clients`` CLI processes, lets it run, stops it with SIGTERM and reads the
journals back. Prints, for the measured window: beats per minute completed, beats
skipped by reason, p50/p99 of due -> first journaled delta and of the wait for a turn
slot; and the peak RSS of the daemon plus all its descendants (sampled every 0.5 s).

**Offered rate.** Every job has ``every = D`` and ``jitter = D - 1s``, so (see
``jobs/splay.py``) the first beats of the fleet are spread evenly over the jitter: N
beats arrive in ``D - 1s``, a steady ``N / (D - 1s)`` per minute, and no job beats a
second time before ``D``. Every beat of the window is therefore a conversation's first
beat: a new CLI process (the pool evicts the least recently used idle one) and a new
session. ``--interval D`` sets ``D``; ``--rate R`` picks it (near ``N / R``) so that
the measured window holds R beats per minute: the offsets are a hash of the names,
known in advance, and a plain ``N / R`` would be off by chance by 15% in a short window.

**Finding the sustainable rate** (the default when neither is given): a short probe
at ``--probe-rate`` (far above capacity) measures how many beats per minute the pool
completes when saturated; then trials at 80%, 90%, ... 120% of that, ascending, until
one does not keep up (a ``no_capacity`` skip, or a backlog of waiting beats that grew:
by more than ``max_concurrent_turns`` from the window's start to its end, or with a
least-squares slope above 10% of the offered rate). The main run uses the highest
rate that kept up. With D of many minutes no beat can wait past its window (D) within
a short run, so in practice the backlog's growth is what decides.

Every beat here starts a CLI process (about 1 CPU second), so the answer is bounded
by the CPU the machine leaves to vigil: the table shows what the rest of the machine
used during the window.

**Fairness** (issue 15), after that in the same run: N conversations (48) beat again
and again, every ``D`` with ``jitter = D/2``. A probe far above capacity measures the
sustainable rate (the beats per minute the pool completes when saturated); then trials
offer 1x, 1.5x and 2x of it. Each reports beats per minute, due -> first delta p50/p99,
``no_capacity`` skips, Jain's index over the turns each conversation completed in the
window (``(sum x)^2 / (n sum x^2)``: 1.0 is perfectly even; target >= 0.95 at 2x), and
the CPU seconds per completed beat of the daemon process alone and of its whole tree
(the daemon plus the CLI processes). ``--quick`` runs only these, small (about 5
minutes); the full run (rate search, main run, fairness) takes about 35 minutes.

    PYTHONPATH=. .venv/bin/python bench/fleet.py --quick         # fairness only, ~5 min
    PYTHONPATH=. .venv/bin/python bench/fleet.py                 # find the rate, then 5 min
    PYTHONPATH=. .venv/bin/python bench/fleet.py --rate 40 --minutes 5
    PYTHONPATH=. .venv/bin/python bench/fleet.py --conversations 50 --interval 2m --minutes 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from bench.fleet_stats import (
    Beat,
    WindowStats,
    beats_of,
    best_jain_index,
    completed_per_job,
    jain_index,
    parse_at,
    percentile,
    window_stats,
)
from daemon.durations import format_duration, parse_duration
from daemon.journal.keyring import Keyring
from daemon.journal.scan import read_events
from daemon.testing.harness import Daemon, HarnessError, Job, LoopbackModel, Site, descendants
from jobs.splay import first_beat_splay

RSS_TARGET_GB = 4.0
SAMPLE_EVERY_S = 0.5
FIRST_BEAT_DELAY = timedelta(seconds=1)  # daemon/runtime/supervisor.py
_UNIT = timedelta(days=10_000)  # first_beat_splay(name, _UNIT) / _UNIT: the name's fraction
TRIAL_FRACTIONS = (0.8, 0.9, 1.0, 1.1, 1.2)  # of the probe's throughput, ascending
FALLBACK_FRACTIONS = (0.6, 0.4)  # when even the first one fell behind
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------- processes


def memory_kb(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process in kB; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def cpu_ticks(pid: int, *, own: bool = False) -> int:
    """utime + stime + cutime + cstime: summed over a live tree, every CPU tick the
    tree ever used, counting children that already exited (in their parent's c*time).
    ``own``: utime + stime only (the process itself)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(x) for x in fields[11 : 13 if own else 15])


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def is_client(pid: int, daemon: int) -> bool:
    """A CLI process the daemon started: its direct child running the bundled CLI (a
    CLI's own short-lived forks carry the same command line until they exec)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return False
    return ppid == daemon and argv0.endswith(b"/claude")


@dataclass(frozen=True)
class Sample:
    wall: datetime
    rss_kb: int
    pss_kb: int
    clis: int
    processes: int
    tree_ticks: int
    daemon_ticks: int  # the daemon process alone (utime + stime)
    model_ticks: int
    machine_busy: int
    machine_total: int


class TreeSampler:
    """Every 0.5 s: memory and CPU of the daemon and all its descendants."""

    def __init__(self, pid: int, model_pid: int) -> None:
        self.pid = pid
        self.model_pid = model_pid
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.samples.append(self.sample())
            if self._stop.wait(SAMPLE_EVERY_S):
                return

    def sample(self) -> Sample:
        pids = [self.pid, *descendants(self.pid)]
        memory = [memory_kb(p) for p in pids]
        busy, total = machine_ticks()
        return Sample(
            wall=datetime.now(UTC),
            rss_kb=sum(r for r, _ in memory),
            pss_kb=sum(p for _, p in memory),
            clis=sum(1 for p in pids if is_client(p, self.pid)),
            processes=sum(1 for r, _ in memory if r),
            tree_ticks=sum(cpu_ticks(p) for p in pids),
            daemon_ticks=cpu_ticks(self.pid, own=True),
            model_ticks=cpu_ticks(self.model_pid),
            machine_busy=busy,
            machine_total=total,
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunSpec:
    label: str
    conversations: int
    every: timedelta
    max_live: int
    max_turns: int
    warmup: timedelta
    measure: timedelta
    rate: float | None = None  # the offered beats per minute asked for (--rate, a trial)
    jitter_fraction: float | None = None  # fairness runs: jitter = every * this; beats repeat

    @property
    def jitter(self) -> timedelta:
        if self.jitter_fraction is not None:
            return self.every * self.jitter_fraction
        return self.every - timedelta(seconds=1)

    @property
    def nominal_rate(self) -> float:
        """Beats per minute offered while the first beats are spread over the jitter
        (a fairness run: every beat of every conversation, one per ``every``)."""
        if self.jitter_fraction is not None:  # the jitter adds to every interval on average
            mean = self.every * (1 + self.jitter_fraction / 2)
            return self.conversations / (mean.total_seconds() / 60)
        return self.conversations / (self.jitter.total_seconds() / 60)

    def names(self) -> list[str]:
        return job_names(self.conversations)


def job_names(conversations: int) -> list[str]:
    return [f"fleet-{i:04d}" for i in range(conversations)]


def interval_for(
    names: list[str], rate_per_min: float, warmup: timedelta, measure: timedelta
) -> timedelta:
    """``every`` (jitter = every - 1s) offering ``rate_per_min`` in the measured window.

    The splay is a hash, so a plain ``N / rate`` would put, by chance, 15% more or
    fewer first beats into a 75 s window. The offsets are known in advance, so pick
    the jitter within 25% of ``N / rate`` whose window holds the wanted count."""
    fractions = sorted(first_beat_splay(name, _UNIT) / _UNIT for name in names)
    low = (warmup - FIRST_BEAT_DELAY).total_seconds()  # offsets due inside the window
    high = low + measure.total_seconds()
    wanted = rate_per_min * measure.total_seconds() / 60
    plain = len(names) / rate_per_min * 60

    def miss(jitter: float) -> tuple[float, float]:
        count = bisect_left(fractions, high / jitter) - bisect_left(fractions, low / jitter)
        return abs(count - wanted), abs(jitter - plain)

    best = min((plain * (0.75 + step / 2000) for step in range(1001)), key=miss)
    return timedelta(milliseconds=round(best * 1000)) + timedelta(seconds=1)


@dataclass
class RunResult:
    spec: RunSpec
    stats: WindowStats
    samples: list[Sample]
    window: tuple[datetime, datetime]
    ready_s: float
    stop_s: float
    exit_code: int
    dispatch_lag: list[float] = field(default_factory=list)
    cancelled_waiting: int = 0  # beats still waiting for a slot at SIGTERM
    model_requests: int = 0
    load_before: str = ""
    load_after: str = ""
    completed_by_job: dict[str, int] = field(default_factory=dict)  # in the window

    @property
    def fairness(self) -> float | None:
        """Jain's index over the turns each conversation completed in the window."""
        return jain_index(list(self.completed_by_job.values()))

    @property
    def best_fairness(self) -> float | None:
        """The best index the completed beats could reach (whole beats, evenly spread)."""
        return best_jain_index(sum(self.completed_by_job.values()), len(self.completed_by_job))

    @property
    def kept_up(self) -> bool:
        return self.stats.kept_up(self.spec.max_turns)

    @property
    def peak(self) -> Sample:
        return max(self.samples, key=lambda s: s.rss_kb)

    def cpu(self) -> dict[str, float]:
        """Cores in use on average over the window: vigil's tree, the model, the rest."""
        start, end = self.window
        inside = [s for s in self.samples if start <= s.wall <= end]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        seconds = (last.wall - first.wall).total_seconds()
        cores = os.cpu_count() or 1
        tree = (last.tree_ticks - first.tree_ticks) / CLK_TCK / seconds
        model = (last.model_ticks - first.model_ticks) / CLK_TCK / seconds
        daemon = (last.daemon_ticks - first.daemon_ticks) / CLK_TCK / seconds
        machine_busy = last.machine_busy - first.machine_busy
        machine = cores * machine_busy / (last.machine_total - first.machine_total)
        return {
            "cores": cores,
            "vigil_tree": round(tree, 2),
            "vigil_daemon_process": round(daemon, 2),
            "dev_model": round(model, 2),
            "rest_of_machine": round(max(machine - tree - model, 0.0), 2),
            "vigil_cpu_s_per_completed_beat": round(
                tree * seconds / max(self.stats.completed, 1), 2
            ),
            # The daemon process alone (its threads; not the CLI processes it runs).
            "daemon_cpu_s_per_completed_beat": round(
                daemon * seconds / max(self.stats.completed, 1), 3
            ),
        }

    def as_json(self) -> dict[str, Any]:
        peak = self.peak
        return {
            "label": self.spec.label,
            "conversations": self.spec.conversations,
            "every": format_duration(self.spec.every),
            "jitter": format_duration(self.spec.jitter),
            "rate_asked_per_min": self.spec.rate,
            "nominal_rate_per_min": round(self.spec.nominal_rate, 2),
            "max_live_clients": self.spec.max_live,
            "max_concurrent_turns": self.spec.max_turns,
            "warmup_s": self.spec.warmup.total_seconds(),
            "window": [w.isoformat() for w in self.window],
            **self.stats.as_json(),
            "kept_up": self.kept_up,
            "dispatch_lag_s": {
                "n": len(self.dispatch_lag),
                "p50": percentile(self.dispatch_lag, 50),
                "p99": percentile(self.dispatch_lag, 99),
            },
            "peak_rss_gb": round(peak.rss_kb / 2**20, 3),
            "peak_pss_gb": round(max(s.pss_kb for s in self.samples) / 2**20, 3),
            "most_cli_processes": max(s.clis for s in self.samples),
            "processes_at_peak": peak.processes,
            "cpu": self.cpu(),
            "beats_waiting_at_sigterm": self.cancelled_waiting,
            "model_message_requests": self.model_requests,
            "start_to_ready_s": round(self.ready_s, 2),
            "sigterm_to_exit_s": round(self.stop_s, 2),
            "exit_code": self.exit_code,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "jain_index": None if self.fairness is None else round(self.fairness, 4),
            "jain_index_best_possible": (
                None if self.best_fairness is None else round(self.best_fairness, 4)
            ),
            "completed_per_conversation": {
                "min": min(self.completed_by_job.values(), default=0),
                "max": max(self.completed_by_job.values(), default=0),
            },
        }


def write_site(site: Site, spec: RunSpec) -> Path:
    every, jitter = format_duration(spec.every), format_duration(spec.jitter)
    jobs = [
        Job(name, f"{name} checks in.", every=every, cwd="agents", extra={"jitter": jitter})
        for name in spec.names()
    ]
    return site.write_config(
        jobs,
        drain_grace="10s",
        max_live_clients=spec.max_live,
        max_concurrent_turns=spec.max_turns,
    )


def stop_daemon(daemon: Daemon) -> int:
    try:
        return daemon.terminate(timeout=180)
    except HarnessError:
        log("vigil run ignored SIGTERM for 180 s; killing its process group")
        os.killpg(daemon.pid, signal.SIGKILL)  # the group the harness created for it
        return daemon.proc.wait(timeout=30)


def read_beats(root: Path, spec: RunSpec) -> dict[str, list[Beat]]:
    keyring = Keyring.load(root / "vigil.key")
    conversations = root / "state" / "conversations"
    return {
        name: beats_of(name, read_events(conversations / f"{name}.jsonl", name, keyring))
        for name in spec.names()
    }


def date_unstarted_first_beats(beats: dict[str, list[Beat]], planned: dict[str, datetime]) -> int:
    """A beat still waiting for a turn slot at SIGTERM is journaled as skipped
    (``daemon_stopping``) without its due time. Every beat of a run is its job's first
    one, due at a known instant: date those skips by it, so they count as offered and
    as backlog. Returns how many were dated."""
    dated = 0
    for name, found in beats.items():
        if found and found[0].outcome == "skipped" and found[0].reason == "daemon_stopping":
            found[0].due = planned[name]
            dated += 1
    return dated


def planned_first_dues(spec: RunSpec, ready: datetime) -> dict[str, datetime]:
    """When each job's first beat was scheduled: READY + 1 s + its splay (the daemon
    schedules right after READY, so this is early by at most that loop's duration)."""
    return {
        name: ready + FIRST_BEAT_DELAY + first_beat_splay(name, spec.jitter)
        for name in spec.names()
    }


def dispatch_lags(beats: dict[str, list[Beat]], planned: dict[str, datetime]) -> list[float]:
    """For each job's first beat that ran: due_at minus when it was scheduled. How late
    the scheduler's callback ran (event-loop lag), which due_at itself cannot show."""
    lags = []
    for name, found in beats.items():
        first = next((b for b in found if b.trigger == "schedule"), None)
        if first is not None:
            lags.append((first.due - planned[name]).total_seconds())
    return lags


def run_once(spec: RunSpec, model: LoopbackModel, *, keep: bool) -> RunResult:
    root = Path(tempfile.mkdtemp(prefix="vigil-fleet-", dir="/tmp"))
    site = Site(root, model, api_key="fleet-bench-key")
    write_site(site, spec)
    load_before = load_average()
    requests_before = int(model.stats()["message_requests"])
    log(
        f"{spec.label}: {spec.conversations} jobs every {format_duration(spec.every)}, "
        f"offered {spec.rate or spec.nominal_rate:.1f}/min; site {root}; load {load_before}"
    )
    started = time.monotonic()
    # The whole log goes to daemon.log; only READY is kept in memory.
    daemon = site.start(
        ready=False, log_path=root / "daemon.log", keep=lambda x: x.get("event") == "ready"
    )
    sampler = TreeSampler(daemon.pid, model.proc.pid)
    try:
        try:
            ready = parse_at(str(daemon.wait_ready(timeout=600)["timestamp"]))
        except HarnessError as exc:
            raise SystemExit(f"vigil run did not get READY: {exc}") from None
        ready_s = time.monotonic() - started
        start = ready + spec.warmup
        end = start + spec.measure
        wait_until(daemon.proc, end + timedelta(seconds=1), sampler)
        stopping = time.monotonic()
        exit_code = stop_daemon(daemon)
        stop_s = time.monotonic() - stopping
    finally:
        sampler.stop()
        site.close(keep_logs=keep)
    beats = read_beats(root, spec)
    planned = planned_first_dues(spec, ready)
    cancelled = date_unstarted_first_beats(beats, planned)
    flat = [b for found in beats.values() for b in found]
    result = RunResult(
        spec,
        window_stats(flat, start, end),
        sampler.samples,
        (start, end),
        ready_s,
        stop_s,
        exit_code,
        dispatch_lag=dispatch_lags(beats, planned),
        cancelled_waiting=cancelled,
        model_requests=int(model.stats()["message_requests"]) - requests_before,
        load_before=load_before,
        load_after=load_average(),
        completed_by_job=completed_per_job(beats, start, end),
    )
    if keep:
        log(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    stats = result.stats
    log(
        f"{spec.label}: offered {stats.offered_per_min:.1f}/min, completed "
        f"{stats.completed_per_min:.1f}/min, backlog {stats.backlog_start}->{stats.backlog_end} "
        f"(slope {stats.backlog_slope:+.1f}/min), no_capacity {stats.no_capacity}, "
        f"peak RSS {result.peak.rss_kb / 2**20:.2f} GB: "
        + ("kept up" if result.kept_up else "did NOT keep up")
    )
    return result


def wait_until(proc: subprocess.Popen[str], when: datetime, sampler: TreeSampler) -> None:
    last_note = time.monotonic()
    while (left := (when - datetime.now(UTC)).total_seconds()) > 0:
        if proc.poll() is not None:
            raise SystemExit(f"vigil run exited with {proc.returncode} during the run")
        time.sleep(min(left, 1.0))
        if time.monotonic() - last_note >= 30 and sampler.samples:
            last_note = time.monotonic()
            now = sampler.samples[-1]
            log(
                f"  {left:5.0f}s left; RSS {now.rss_kb / 2**20:.2f} GB, "
                f"{now.clis} CLI processes, load {load_average()}"
            )


# ---------------------------------------------------------------- the rate search


def trial_spec(args: argparse.Namespace, label: str, rate: float) -> RunSpec:
    warmup, measure = timedelta(seconds=args.trial_warmup), timedelta(seconds=args.trial_seconds)
    return RunSpec(
        label,
        args.conversations,
        interval_for(job_names(args.conversations), rate, warmup, measure),
        args.max_live_clients,
        args.max_concurrent_turns,
        warmup,
        measure,
        rate,
    )


def find_rate(
    args: argparse.Namespace, model: LoopbackModel
) -> tuple[float | None, list[RunResult]]:
    """Saturate once to measure capacity, then ascend through fractions of it."""
    probe = run_once(trial_spec(args, "probe", args.probe_rate), model, keep=args.keep)
    trials = [probe]
    if probe.kept_up:
        log(f"the probe at {args.probe_rate}/min kept up: raise --probe-rate to find the limit")
        return args.probe_rate, trials
    capacity = probe.stats.completed_per_min
    best: float | None = None
    for fraction in TRIAL_FRACTIONS:
        rate = round(capacity * fraction, 1)
        trial = run_once(trial_spec(args, f"trial {fraction:.0%}", rate), model, keep=args.keep)
        trials.append(trial)
        if not trial.kept_up:
            break
        best = rate
    if best is None:
        for fraction in FALLBACK_FRACTIONS:
            rate = round(capacity * fraction, 1)
            trial = run_once(trial_spec(args, f"trial {fraction:.0%}", rate), model, keep=args.keep)
            trials.append(trial)
            if trial.kept_up:
                best = rate
                break
    return best, trials


# ---------------------------------------------------------------- output


def fmt(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def print_trials(trials: list[RunResult], out: IO[str]) -> None:
    print("rate search (each trial: a fresh site and daemon)", file=out)
    print(
        f"  {'trial':<11}{'asked/min':>10}{'offered/min':>12}{'done/min':>10}"
        f"{'backlog':>12}{'slope/min':>10}"
        f"{'no_cap':>8}{'p50 due->delta':>16}{'peak RSS':>10}  verdict",
        file=out,
    )
    for t in trials:
        s = t.stats
        print(
            f"  {t.spec.label:<11}{t.spec.rate or 0:>10.1f}{s.offered_per_min:>12.1f}"
            f"{s.completed_per_min:>10.1f}"
            f"{f'{s.backlog_start}->{s.backlog_end}':>12}{s.backlog_slope:>+10.1f}"
            f"{s.no_capacity:>8}{fmt(s.due_to_first_delta.p50):>16}"
            f"{t.peak.rss_kb / 2**20:>8.2f}GB  " + ("kept up" if t.kept_up else "fell behind"),
            file=out,
        )


def print_run(result: RunResult, out: IO[str]) -> None:
    spec, s = result.spec, result.stats
    peak = result.peak
    cpu = result.cpu()
    rows = [
        (
            "setup",
            f"{spec.conversations} conversations, every {format_duration(spec.every)} "
            f"(jitter {format_duration(spec.jitter)}), max_live_clients {spec.max_live}, "
            f"max_concurrent_turns {spec.max_turns}",
        ),
        (
            "window",
            f"{s.minutes:.1f} min after {spec.warmup.total_seconds():.0f} s warmup "
            f"(start to READY {result.ready_s:.1f} s)",
        ),
        ("beats due (offered)", f"{s.offered}  ({s.offered_per_min:.1f}/min)"),
        ("turns started", f"{s.started}"),
        ("turns completed", f"{s.completed}  ({s.completed_per_min:.1f}/min)"),
        ("turns failed", f"{sum(s.failed.values())}  {dict(s.failed) or ''}"),
        ("turns interrupted", f"{s.interrupted}"),
        ("beats skipped", f"{sum(s.skipped.values())}  {dict(s.skipped) or ''}"),
        ("CLI connects", f"{s.connects} ({s.resumes} resumes)"),
        (
            "due -> first delta",
            f"p50 {fmt(s.due_to_first_delta.p50)}  p99 {fmt(s.due_to_first_delta.p99)}  "
            f"max {fmt(s.due_to_first_delta.max)}  (turns due in the window: "
            f"{s.due_to_first_delta.n} of {s.offered} beats due)",
        ),
        (
            "wait for a turn slot",
            f"p50 {fmt(s.waited.p50)}  p99 {fmt(s.waited.p99)}  max {fmt(s.waited.max)}",
        ),
        (
            "turn start -> CLI connected",
            f"p50 {fmt(s.connect.p50)}  p99 {fmt(s.connect.p99)}  max {fmt(s.connect.max)}",
        ),
        (
            "scheduler dispatch lag",
            f"p50 {fmt(percentile(result.dispatch_lag, 50))}  "
            f"p99 {fmt(percentile(result.dispatch_lag, 99))}  (first beats, estimated)",
        ),
        (
            "backlog (waiting beats)",
            f"{s.backlog_start} -> {s.backlog_end}, max {s.backlog_max}, "
            f"slope {s.backlog_slope:+.1f}/min",
        ),
        (
            "peak memory",
            f"RSS {peak.rss_kb / 2**20:.2f} GB (sum over {peak.processes} processes, "
            f"{peak.clis} CLIs); PSS {max(x.pss_kb for x in result.samples) / 2**20:.2f} GB; "
            f"at most {max(x.clis for x in result.samples)} CLI processes",
        ),
        (
            "CPU in window (cores)",
            f"vigil {cpu.get('vigil_tree', '-')} (daemon process "
            f"{cpu.get('vigil_daemon_process', '-')}), dev model {cpu.get('dev_model', '-')}, "
            f"rest of machine {cpu.get('rest_of_machine', '-')} of {cpu.get('cores', '-')}; "
            f"{cpu.get('vigil_cpu_s_per_completed_beat', '-')} CPU s per beat",
        ),
        ("waiting at SIGTERM", f"{result.cancelled_waiting} beats (skipped: daemon_stopping)"),
        ("model requests", f"{result.model_requests} /v1/messages calls"),
        ("load average", f"before {result.load_before}; after {result.load_after}"),
        ("shutdown", f"SIGTERM -> exit {result.exit_code} in {result.stop_s:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{spec.label} run", file=out)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", file=out)


def verdicts(result: RunResult, rate: float | None) -> list[tuple[str, bool, str]]:
    s = result.stats
    peak_gb = result.peak.rss_kb / 2**20
    return [
        (
            f"peak RSS under {RSS_TARGET_GB:.0f} GB",
            peak_gb < RSS_TARGET_GB,
            f"{peak_gb:.2f} GB",
        ),
        (
            "no beat skipped for lack of capacity, backlog not growing",
            result.kept_up,
            f"{s.no_capacity} no_capacity skips, backlog slope {s.backlog_slope:+.1f}/min "
            f"at {s.offered_per_min:.1f} offered/min",
        ),
        (
            "sustained beats per minute",
            result.kept_up,
            f"{s.completed_per_min:.1f}/min completed"
            + (f" (rate search: {rate}/min)" if rate is not None else ""),
        ),
    ]


# ---------------------------------------------------------------- fairness


FAIRNESS_LOADS = (1.0, 1.5, 2.0)  # of the sustainable rate
FAIRNESS_TARGET = 0.95  # Jain's index at 2x
FAIRNESS_JITTER = 0.5  # of every: first beats splayed over half an interval, later ones jittered


@dataclass(frozen=True)
class FairnessPlan:
    conversations: int
    max_live: int
    max_turns: int
    warmup: timedelta
    measure: timedelta
    probe_warmup: timedelta
    probe_measure: timedelta
    probe_rate: float  # per minute, far above capacity

    @classmethod
    def of(cls, args: argparse.Namespace) -> FairnessPlan:
        quick = args.quick
        return cls(
            conversations=args.fairness_conversations or (10 if quick else 48),
            max_live=min(args.max_live_clients, 4) if quick else args.max_live_clients,
            max_turns=min(args.max_concurrent_turns, 2) if quick else args.max_concurrent_turns,
            warmup=timedelta(seconds=15 if quick else 60),
            measure=timedelta(seconds=60 if quick else 240),
            probe_warmup=timedelta(seconds=15 if quick else 30),
            probe_measure=timedelta(seconds=35 if quick else 90),
            probe_rate=args.probe_rate,
        )

    def spec(self, label: str, rate: float, *, probe: bool = False) -> RunSpec:
        """N conversations offering ``rate`` beats per minute between them, jittered.

        APScheduler 3 adds each beat's jitter to the next due time too (it schedules
        from the previous fire time), so beats come on average every + jitter / 2
        apart: ``every`` is shortened to match."""
        mean = timedelta(minutes=self.conversations / rate)
        every = max(mean / (1 + FAIRNESS_JITTER / 2), timedelta(seconds=2))
        return RunSpec(
            label,
            self.conversations,
            timedelta(milliseconds=round(every.total_seconds() * 1000)),
            self.max_live,
            self.max_turns,
            self.probe_warmup if probe else self.warmup,
            self.probe_measure if probe else self.measure,
            rate,
            jitter_fraction=FAIRNESS_JITTER,
        )


def run_fairness(
    plan: FairnessPlan, model: LoopbackModel, *, keep: bool
) -> tuple[float, list[RunResult]]:
    """Saturate once (the sustainable rate is what the pool then completes per minute),
    then offer 1x, 1.5x and 2x of it; every conversation beats again and again."""
    probe = run_once(plan.spec("fair probe", plan.probe_rate, probe=True), model, keep=keep)
    sustainable = round(probe.stats.completed_per_min, 1)
    log(f"fairness: sustainable rate {sustainable}/min (completed at saturation)")
    results = [probe]
    for load in FAIRNESS_LOADS:
        spec = plan.spec(f"fair {load:g}x", sustainable * load)
        results.append(run_once(spec, model, keep=keep))
    return sustainable, results


def print_fairness(
    plan: FairnessPlan, sustainable: float, results: list[RunResult], out: IO[str]
) -> None:
    print(
        f"fairness: {plan.conversations} conversations, max_live_clients {plan.max_live}, "
        f"max_concurrent_turns {plan.max_turns}; sustainable rate {sustainable}/min "
        f"(completed at saturation); each trial {plan.measure.total_seconds():.0f} s "
        f"after {plan.warmup.total_seconds():.0f} s warmup",
        file=out,
    )
    print(
        f"  {'trial':<11}{'every':>9}{'offered/min':>12}{'done/min':>10}{'no_cap':>8}"
        f"{'Jain':>7}{'(best)':>8}{'min..max':>10}{'p50 due->delta':>16}{'p99':>8}"
        f"{'daemon CPU/beat':>17}{'tree CPU/beat':>15}{'load':>7}",
        file=out,
    )
    for r in results:
        s, cpu = r.stats, r.cpu()
        counts = r.completed_by_job.values()
        jain = "-" if r.fairness is None else f"{r.fairness:.3f}"
        best = "-" if r.best_fairness is None else f"({r.best_fairness:.3f})"
        print(
            f"  {r.spec.label:<11}{format_duration(r.spec.every):>9}{s.offered_per_min:>12.1f}"
            f"{s.completed_per_min:>10.1f}{s.no_capacity:>8}{jain:>7}{best:>8}"
            f"{f'{min(counts, default=0)}..{max(counts, default=0)}':>10}"
            f"{fmt(s.due_to_first_delta.p50):>16}{fmt(s.due_to_first_delta.p99):>8}"
            f"{fmt(cpu.get('daemon_cpu_s_per_completed_beat')):>17}"
            f"{fmt(cpu.get('vigil_cpu_s_per_completed_beat')):>15}"
            f"{r.load_after.split(' ', 1)[0]:>7}",
            file=out,
        )


def fairness_verdict(results: list[RunResult]) -> tuple[str, bool, str]:
    last = results[-1]  # the 2x trial
    index = last.fairness
    met = index is not None and index >= FAIRNESS_TARGET
    shown = "-" if index is None else f"{index:.3f}"
    if last.best_fairness is not None:
        shown += (
            f"; at best {last.best_fairness:.3f} for {sum(last.completed_by_job.values())} beats"
        )
    return (f"Jain's index >= {FAIRNESS_TARGET} at 2x the sustainable rate", met, shown)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="a fleet of conversations against the client pool",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--max-live-clients", type=int, default=8)
    parser.add_argument(
        "--max-concurrent-turns",
        type=int,
        default=4,
        help="the daemon's default; on 2 cores the CLI start-up is CPU-bound, so more "
        "slots only lengthen each turn",
    )
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument(
        "--interval", type=parse_duration, help="the jobs' every (jitter = every - 1s)"
    )
    rate.add_argument("--rate", type=float, help="offered beats per minute (sets --interval)")
    parser.add_argument("--minutes", type=float, default=5.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before it")
    parser.add_argument("--probe-rate", type=float, default=240.0, help="per minute")
    parser.add_argument("--trial-seconds", type=float, default=75.0)
    parser.add_argument("--trial-warmup", type=float, default=15.0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the fairness trials, small (10 conversations, a pool of at most 4 clients "
        "and 2 turn slots, 60 s trials): about 5 minutes",
    )
    parser.add_argument(
        "--fairness-conversations",
        type=int,
        default=None,
        help="conversations in the fairness trials (48; 10 with --quick)",
    )
    parser.add_argument("--no-fairness", action="store_true", help="skip the fairness trials")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--keep", action="store_true", help="keep each site directory")
    args = parser.parse_args(argv)
    if args.max_concurrent_turns > args.max_live_clients:
        parser.error("--max-concurrent-turns cannot exceed --max-live-clients")
    if args.interval is not None and args.interval < timedelta(seconds=2):
        parser.error("--interval must be at least 2s (jitter = interval - 1s)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = LoopbackModel()
    started = time.monotonic()
    trials: list[RunResult] = []
    found: float | None = None
    result: RunResult | None = None
    plan = FairnessPlan.of(args)
    fair: list[RunResult] = []
    sustainable = 0.0
    try:
        if not args.quick:
            result, trials, found = first_beats(args, model)
        if not args.no_fairness:
            sustainable, fair = run_fairness(plan, model, keep=args.keep)
    finally:
        model.stop()
    minutes = (time.monotonic() - started) / 60
    checks = verdicts(result, found) if result is not None else []
    if fair:
        checks.append(fairness_verdict(fair))
    if args.json:
        document = {
            "sustainable_rate_per_min": found,
            "trials": [t.as_json() for t in trials],
            "main": None if result is None else result.as_json(),
            "fairness": {
                "sustainable_rate_per_min": sustainable,
                "trials": [t.as_json() for t in fair],
            },
            "targets": {name: {"met": ok, "value": value} for name, ok, value in checks},
            "duration_min": round(minutes, 1),
        }
        print(json.dumps(document, indent=2, default=str))
        return 0
    if trials:
        print_trials(trials, sys.stdout)
        print(f"  highest asked rate that kept up: {found}/min\n")
    if result is not None:
        print_run(result, sys.stdout)
        print()
    if fair:
        print_fairness(plan, sustainable, fair, sys.stdout)
        print()
    for name, ok, value in checks:
        print(f"target: {name}: {'met' if ok else 'MISSED'} ({value})")
    print(f"the whole run took {minutes:.1f} minutes")
    return 0


def first_beats(
    args: argparse.Namespace, model: LoopbackModel
) -> tuple[RunResult, list[RunResult], float | None]:
    """The first-beat fleet: find the sustainable rate (unless given), then the main run."""
    trials: list[RunResult] = []
    found: float | None = None
    rate: float | None = None
    warmup, measure = timedelta(seconds=args.warmup), timedelta(minutes=args.minutes)
    if args.interval is not None:
        every = args.interval
    else:
        rate = args.rate
        if rate is None:
            found, trials = find_rate(args, model)
            rate = found if found is not None else min(t.spec.rate or 0.0 for t in trials)
            if found is None:
                log(f"no trial kept up; the main run uses the lowest rate tried ({rate}/min)")
        every = interval_for(job_names(args.conversations), rate, warmup, measure)
    spec = RunSpec(
        "main",
        args.conversations,
        every,
        args.max_live_clients,
        args.max_concurrent_turns,
        warmup,
        measure,
        rate,
    )
    return run_once(spec, model, keep=args.keep), trials, found


if __name__ == "__main__":
    raise SystemExit(main())
