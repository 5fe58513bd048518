"""Time from process start to READY=1 with many long conversations on disk.

Writes N conversations of M records each (a realistic mix: turns of deltas, assistant
message, completion; fsync off while writing), then in the same run measures:

* read: decrypting and parsing every journal in this process (the floor of a full read),
* full: ``vigil run`` started as a subprocess until its ``READY=1`` datagram arrives on a
  real ``NOTIFY_SOCKET``, with no checkpoints (every journal read in full, as before
  checkpoints; this start writes them after READY, and its SIGTERM waits for them),
* ready: the same with the checkpoints the first start wrote: start-up reads each
  checkpoint and the records after it (none here), O(conversations), not O(records).
* again without checkpoints (deleted): the full read once more, for the ratio.

Target: ready <= 1.5 s at 1,000 x 1,000 and 1,000 x 10,000 records. The load average is
printed beside each figure (the machine may be shared). The data is removed at the end
unless ``--keep``.

    .venv/bin/python bench/recovery.py [--conversations 1000] [--records 1000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from daemon import events as ev
from daemon.journal.file import FsyncPolicy, Journal
from daemon.journal.framing import encode_payload
from daemon.journal.keyring import Keyring
from daemon.journal.scan import read_events


def write_conversation(path: Path, name: str, keyring: Keyring, records: int, cwd: str) -> None:
    journal = Journal.open(path, name, keyring, fsync=FsyncPolicy.NEVER)
    payloads = [
        encode_payload(ev.session_bound("0" * 8 + "-0000-4000-8000-" + "0" * 12, cwd, mode="new"))
    ]
    turn = 0
    while len(payloads) < records:
        turn += 1
        payloads.append(
            encode_payload(ev.turn_started(turn, "Check the inbox.", job=name, trigger="schedule"))
        )
        payloads.extend(encode_payload(ev.delta(turn, "some streamed words ")) for _ in range(6))
        payloads.append(
            encode_payload(
                ev.assistant(turn, "some streamed words " * 6, uuid=f"a-{turn}", model="m")
            )
        )
        payloads.append(encode_payload(ev.turn_completed(turn)))
    journal.append_payloads(payloads[:records])
    journal.close()


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` so far, with its waited-for children (the read workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def time_start(root: Path, *, checkpoints: int = 0) -> tuple[float, float]:
    """Seconds from starting ``vigil run`` to READY=1, and the CPU seconds it used by
    then (which a busy machine does not inflate). Then, with ``checkpoints``, wait
    until that many checkpoint files exist (written after READY); then stop it (a second
    SIGTERM exits at once: no waiting for the mirror's background rebuild)."""
    sock_path = root / "notify.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(3600)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli.main", "run", "--config", str(root / "vigil.toml")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )

    def read_log() -> None:  # keeps the pipe drained
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"event": "recovered"' in line or '"event": "checkpoints_read"' in line:
                print(f"  daemon log: {line.strip()}")

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    ready_s: float | None = None
    try:
        while ready_s is None:
            message = sock.recv(4096).decode()
            if "READY=1" in message.split("\n"):
                ready_s = time.perf_counter() - t0
                cpu_s = cpu_seconds(proc.pid)
        directory = root / "state" / "checkpoints"
        while checkpoints and len(list(directory.glob("*.ckpt"))) < checkpoints:
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited before writing its checkpoints")
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=3600)
        reader.join(timeout=10)
        sock.close()
    return ready_s, cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description="time to READY with many journals on disk")
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument(
        "--skip-floor", action="store_true", help="skip the in-process read of every journal"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vigil-recovery-"))
    keyring = Keyring.generate()
    keyring.save(root / "vigil.key")
    conversations = root / "state" / "conversations"
    conversations.mkdir(parents=True)
    (root / "agents").mkdir()
    agents = str((root / "agents").resolve())  # the jobs' cwd, as the config resolves it
    names = [f"job-{i:04d}" for i in range(args.conversations)]
    t0 = time.perf_counter()
    for name in names:
        write_conversation(conversations / f"{name}.jsonl", name, keyring, args.records, agents)
    total = args.conversations * args.records
    took = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in conversations.glob("*.jsonl"))
    print(
        f"wrote {total:,} records ({size / 1e9:.2f} GB) in {args.conversations} journals "
        f"in {took:.1f}s (fsync off)  [{load()}]"
    )

    config = [
        "[daemon]",
        'state_dir = "state"',
        'runtime_dir = "run"',
        'key_file = "vigil.key"',
        'fsync = "turn"',
        "",
    ]
    for name in names:
        config += [
            "[[heartbeat]]",
            f'name = "{name}"',
            'every = "1d"',
            'prompt = "Check."',
            'cwd = "agents"',
            "",
        ]
    (root / "vigil.toml").write_text("\n".join(config))

    if not args.skip_floor:
        t0 = time.perf_counter()
        count = sum(
            1 for name in names for _ in read_events(conversations / f"{name}.jsonl", name, keyring)
        )
        read_s = time.perf_counter() - t0
        assert count == total
        rate = f"{total / read_s:,.0f} records/s"
        print(f"read+decrypt only   : {read_s:6.2f} s  ({rate}, one process)  [{load()}]")
    checkpoints = root / "state" / "checkpoints"
    t0 = time.perf_counter()
    full_s, full_cpu = time_start(root, checkpoints=len(names))  # written after READY
    took = time.perf_counter() - t0 - full_s
    print(f"READY, full read    : {full_s:6.2f} s  cpu {full_cpu:5.2f} s  (none)  [{load()}]")
    print(f"  then {len(names)} checkpoints written in {took:.1f} s (background, after READY)")
    ready_s, ready_cpu = time_start(root)
    print(
        f"READY, checkpoints  : {ready_s:6.2f} s  cpu {ready_cpu:5.2f} s  "
        f"({len(names)} checkpoints)  [{load()}]"
    )
    du = sum(p.stat().st_size for p in checkpoints.glob("*.ckpt"))
    shutil.rmtree(checkpoints)
    again_s, again_cpu = time_start(root)
    print(
        f"READY, full again   : {again_s:6.2f} s  cpu {again_cpu:5.2f} s  (checkpoints deleted)  "
        f"[{load()}]"
    )
    print(f"ratio full/checkpoints: {min(full_s, again_s) / ready_s:.1f}x")
    verdict = "met" if ready_s <= 1.5 else "MISSED"
    print(f"target READY <= 1.5 s with checkpoints: {verdict}")
    print(f"checkpoints on disk: {du / 1024:.0f} KiB")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
