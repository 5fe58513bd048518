"""The systemd packaging, checked with systemd's own tools (no running systemd needed).

The unit must load without a single warning, score at most 1.5 in
`systemd-analyze security`, keep the lifecycle promises the daemon relies on
(sd_notify, watchdog, drain on stop, state/runtime directories, credential),
and the sysusers/tmpfiles snippets must build the layout docs/systemd.md
describes. Everything runs on copies under pytest's tmp_path; nothing touches
the real /etc, /run or /tmp.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "vigil.service"
AGENTS_DROPIN = SYSTEMD_DIR / "vigil.service.d" / "agents.conf.example"
SYSUSERS = SYSTEMD_DIR / "sysusers.d" / "vigil.conf"
TMPFILES = SYSTEMD_DIR / "tmpfiles.d" / "vigil.conf"

MAX_EXPOSURE = 1.5


def _tool(name: str) -> str:
    """Path of a systemd tool; fail (never skip) with the fix when it is missing."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name, Path("/bin") / name) if p.exists()), None
    )
    if found is None:
        pytest.fail(
            f"`{name}` not found: install the `systemd` package (Debian/Ubuntu: "
            f"`apt-get install systemd`); the systemd packaging tests run its tools offline.",
            pytrace=False,
        )
    return found


def _run(argv: list[str], unit_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C.UTF-8", SYSTEMD_PAGER="cat", SYSTEMD_COLORS="0")
    if unit_dir is not None:
        # Trailing colon: our directory first, then systemd's default search path
        # (verify resolves sysinit.target, multi-user.target, ...).
        env["SYSTEMD_UNIT_PATH"] = f"{unit_dir}:"
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


def _directives(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> values in file order (keys may repeat, e.g. SystemCallFilter)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def _runnable_executable() -> str:
    """An executable that exists here: the venv's `vigil` script, else the interpreter."""
    script = Path(sys.executable).with_name("vigil")
    return str(script) if script.exists() else sys.executable


def _testable_copy(dest_dir: Path) -> Path:
    """The unit copied into dest_dir with only ExecStart's binary swapped for an
    existing one (verify checks it exists); every other byte is unchanged."""
    original = UNIT.read_text(encoding="utf-8")
    installed = "ExecStart=/opt/vigil/bin/vigil "
    assert original.count(installed) == 1, "ExecStart should run /opt/vigil/bin/vigil exactly once"
    copy = original.replace(installed, f"ExecStart={_runnable_executable()} ")
    changed = [
        (a, b) for a, b in zip(original.splitlines(), copy.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1
    assert changed[0][0].startswith("ExecStart=")
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / "vigil.service"
    target.write_text(copy, encoding="utf-8")
    return target


def _usec(span: str) -> int:
    """A systemd time span in microseconds, as systemd itself parses it."""
    result = _run([_tool("systemd-analyze"), "timespan", span])
    assert result.returncode == 0, f"systemd cannot parse time span {span!r}: {result.stderr}"
    match = re.search(r"s:\s*(\d+)\s*$", result.stdout, re.MULTILINE)
    assert match, f"no microseconds in `systemd-analyze timespan {span}`: {result.stdout!r}"
    return int(match.group(1))


def test_unit_loads_without_any_warning(tmp_path: Path) -> None:
    unit = _testable_copy(tmp_path / "units")
    result = _run([_tool("systemd-analyze"), "verify", str(unit)], unit_dir=unit.parent)
    # verify exits 0 even for unknown keys and unparsable values; those only show
    # up as messages, so a clean unit is one that prints nothing at all.
    messages = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, messages
    assert messages == "", f"systemd-analyze verify complained:\n{messages}"


def test_agents_dropin_example_is_loaded_and_clean(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    unit = _testable_copy(tmp_path / "units")
    dropin_dir = unit.parent / "vigil.service.d"
    dropin_dir.mkdir()
    dropin = dropin_dir / "agents.conf"

    # Control: a typo in a drop-in at this place is reported, so the clean run
    # below really read the drop-in.
    dropin.write_text("[Service]\nReadWritePathz=/srv/agents\n", encoding="utf-8")
    typo = _run([analyze, "verify", str(unit)], unit_dir=unit.parent)
    assert "ReadWritePathz" in typo.stderr, typo.stderr

    shutil.copyfile(AGENTS_DROPIN, dropin)
    writable = _directives(dropin.read_text(encoding="utf-8")).get("Service.ReadWritePaths", [])
    assert writable, "the drop-in example should make the agents' directories writable"
    clean = _run([analyze, "verify", str(unit)], unit_dir=unit.parent)
    messages = (clean.stdout + clean.stderr).strip()
    assert clean.returncode == 0, messages
    assert messages == "", f"the agents drop-in example does not load cleanly:\n{messages}"


def test_security_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    unit = _testable_copy(tmp_path / "units")
    result = _run(
        [_tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
        unit_dir=unit.parent,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no overall exposure in systemd-analyze output:\n{result.stdout}"
    score = float(match.group(1))
    print(f"\nsystemd-analyze security --offline=true vigil.service: exposure {score}")
    assert score <= MAX_EXPOSURE, (
        f"exposure {score} > {MAX_EXPOSURE}; what costs points:\n"
        + "\n".join(line for line in result.stdout.splitlines() if line.startswith("✗"))
    )


def test_unit_keeps_the_lifecycle_promises() -> None:
    d = _directives(UNIT.read_text(encoding="utf-8"))

    def one(key: str) -> str:
        values = d.get(f"Service.{key}", [])
        assert len(values) == 1, f"{key}= should be set exactly once, found {values}"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert _usec(one("WatchdogSec")) > 0
    assert one("Restart") == "on-failure"
    assert one("ExecStart") == "/opt/vigil/bin/vigil run --config /etc/vigil/vigil.toml"
    assert one("KillMode") == "mixed"
    assert one("StateDirectory") == "vigil"
    assert one("StateDirectoryMode") == "0700"
    assert one("RuntimeDirectory") == "vigil"
    assert one("RuntimeDirectoryMode") == "0700"
    assert one("RuntimeDirectoryPreserve") == "no"
    assert one("LoadCredential") == "vigil.key:/etc/vigil/vigil.key"
    assert one("UMask") == "0077"
    assert one("User") == "vigil"
    assert one("EnvironmentFile") == "-/etc/vigil/vigil.env"
    # The bundled CLI needs W+X memory for its JIT and TCP to reach the API.
    assert "Service.MemoryDenyWriteExecute" not in d
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


def test_stop_timeout_leaves_room_for_the_drain() -> None:
    # The daemon's own default `drain_grace`: systemd must not SIGKILL vigil
    # while a turn is still allowed to finish.
    from daemon.config.model import DaemonConfig  # noqa: PLC0415 -- only this test needs the daemon

    default = DaemonConfig.model_fields["drain_grace"].default
    assert isinstance(default, timedelta)
    drain_grace = default.total_seconds()
    d = _directives(UNIT.read_text(encoding="utf-8"))
    stop = _usec(d["Service.TimeoutStopSec"][-1]) / 1e6
    start = _usec(d["Service.TimeoutStartSec"][-1]) / 1e6
    watchdog = _usec(d["Service.WatchdogSec"][-1]) / 1e6
    assert stop > drain_grace, (
        f"TimeoutStopSec={stop}s would SIGKILL vigil before its default "
        f"drain_grace ({drain_grace}s) ends"
    )
    # Recovery runs before READY=1; a minute is the least a journal replay gets.
    assert start >= 60, f"TimeoutStartSec={start}s is too short for recovery"
    assert watchdog >= 10, f"WatchdogSec={watchdog}s leaves no slack for a busy event loop"


def _passwd(root: Path, name: str) -> list[str]:
    for line in (root / "etc" / "passwd").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"no user {name!r} in {root}/etc/passwd")


def _gid(root: Path, name: str) -> int:
    for line in (root / "etc" / "group").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no group {name!r} in {root}/etc/group")


def _sysusers_into(root: Path) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    result = _run([_tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS)])
    assert result.returncode == 0, f"systemd-sysusers failed:\n{result.stderr}"


def test_sysusers_creates_a_static_system_user(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _sysusers_into(root)
    name, _, uid, gid, _, home, shell = _passwd(root, "vigil")
    assert name == "vigil"
    assert 0 < int(uid) < 1000, f"vigil should get a system uid, got {uid}"
    assert int(gid) == _gid(root, "vigil")
    assert home == "/var/lib/vigil"
    assert shell.endswith("nologin")


def test_tmpfiles_builds_the_layout_and_locks_the_secrets(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "this test applies tmpfiles.d/vigil.conf (chown to root and vigil) in a "
            "scratch root under tmp_path and must run as root, as CI does",
            pytrace=False,
        )
    root = tmp_path / "root"
    _sysusers_into(root)
    uid = int(_passwd(root, "vigil")[2])
    gid = _gid(root, "vigil")

    # The files the unit reads, as an operator might first leave them (too open).
    d = _directives(UNIT.read_text(encoding="utf-8"))
    config = d["Service.ExecStart"][0].split("--config", 1)[1].split()[0]
    key = d["Service.LoadCredential"][0].split(":", 1)[1]
    env_file = d["Service.EnvironmentFile"][0].lstrip("-")
    for path in (config, key, env_file):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x\n", encoding="utf-8")
        target.chmod(0o644)

    result = _run([_tool("systemd-tmpfiles"), f"--root={root}", "--create", str(TMPFILES)])
    assert result.returncode == 0, f"systemd-tmpfiles failed:\n{result.stderr}"

    def mode_owner(path: str) -> tuple[int, int, int]:
        st = (root / path.lstrip("/")).stat()
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid

    # The service user can read its config but not write it; only root reads secrets.
    assert mode_owner("/etc/vigil") == (0o750, 0, gid)
    assert mode_owner(config) == (0o640, 0, gid)
    assert mode_owner(key) == (0o600, 0, 0)
    assert mode_owner(env_file) == (0o600, 0, 0)
    assert mode_owner("/srv/agents") == (0o750, uid, gid)
