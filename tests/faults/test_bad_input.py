"""Issue 8: the bad-input catalogue, run through the real ``vigil`` command line.

Every case is a mistake an operator can make: a broken config file, a key file that
is missing, too open, truncated or the wrong one, a journal with a tampered record or
one written by a newer vigil, a prompt file that is not UTF-8. Each one asserts the
exact operator-facing lines on stderr (naming the file, the key or job, and the bad
value), the exit code from ``vigil --help``, and that nothing on disk changed: a
start refused for its config or key creates no state directory, lock, journal or
mirror; one refused for a journal heals, journals and creates nothing, and leaves the
derived mirror as ``vigil rebuild`` would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.config.load import load_config
from daemon.config.model import DaemonConfig, HeartbeatConfig
from daemon.events.heal import fold
from daemon.journal.keyring import Keyring, generate_key_file
from daemon.journal.scan import read_events
from daemon.testing.harness import Job, LoopbackModel, Site, vigil_argv

CONFIG_ERROR = 2
KEY_ERROR = 3
JOURNAL_ERROR = 4
VERIFY_FAILED = 8

DEFAULT_JOB = """\
[[heartbeat]]
name = "inbox"
every = "30m"
prompt_file = "HEARTBEAT.md"
cwd = "work"
"""


# ---------------------------------------------------------------- helpers


def snapshot(root: Path, *, ignore_content: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every file and directory under ``root``: kind, mode and content hash.

    Paths in ``ignore_content`` are checked for kind and mode only.
    """
    if not root.exists():
        return {}
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        info = path.lstat()
        mode = f"{stat.S_IMODE(info.st_mode):04o}"
        if path.is_symlink():
            found[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            found[rel] = f"dir {mode}"
        elif rel in ignore_content:
            found[rel] = f"file {mode}"
        else:
            found[rel] = f"file {mode} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return found


def run_vigil(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIGIL_", "ANTHROPIC_"))}
    return subprocess.run(
        vigil_argv(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


def error_lines(first: str, *more: str) -> str:
    """What the CLI prints: the first line after ``vigil: error:``, the rest as they are."""
    return "\n".join([f"vigil: error: {first}", *more]) + "\n"


def known(model: type[DaemonConfig] | type[HeartbeatConfig]) -> str:
    """The key list an unknown-key message ends with (the schema grows; the wording does not)."""
    return ", ".join(field.alias or name for name, field in model.model_fields.items())


# ---------------------------------------------------------------- a config directory


class Etc:
    """``etc/`` with a config, a key, a prompt file and a work directory; ``var/`` and
    ``run/`` (the configured state and runtime directories) do not exist yet."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "etc"
        self.dir.mkdir()
        self.config = self.dir / "vigil.toml"
        self.key = self.dir / "vigil.key"
        self.state_dir = root / "var" / "vigil"
        self.runtime_dir = root / "run" / "vigil"
        generate_key_file(self.key)
        (self.dir / "work").mkdir()
        (self.dir / "HEARTBEAT.md").write_text("Check the inbox.\n")
        (self.dir / "latin1.md").write_bytes(
            "Check the inbox.\nCaf\u00e9 au lait\n".encode("latin-1")
        )
        (self.dir / "notes.txt").write_text("not a directory\n")

    def write(self, *, daemon: str = "", jobs: str = DEFAULT_JOB, raw: str | None = None) -> Path:
        text = (
            raw
            if raw is not None
            else (
                "[daemon]\n"
                f'state_dir = "{self.state_dir}"\n'
                f'runtime_dir = "{self.runtime_dir}"\n'
                'key_file = "vigil.key"\n'
                f"{daemon}\n{jobs}"
            )
        )
        self.config.write_text(text, encoding="utf-8")
        return self.config

    def tree(self) -> dict[str, str]:
        return snapshot(self.root)


@pytest.fixture
def etc(tmp_path: Path) -> Etc:
    return Etc(tmp_path)


def job(**keys: str) -> str:
    """A ``[[heartbeat]]`` table: the default job with ``keys`` changed (``""`` removes one)."""
    table = {"name": '"inbox"', "every": '"30m"', "prompt_file": '"HEARTBEAT.md"', "cwd": '"work"'}
    table.update(keys)
    return "[[heartbeat]]\n" + "".join(f"{k} = {v}\n" for k, v in table.items() if v)


# ---------------------------------------------------------------- the config catalogue


@dataclass(frozen=True)
class ConfigCase:
    """A broken config: ``daemon`` lines, the ``jobs`` tables (or the ``raw`` file), and
    the problems expected after ``<config>: ``; ``{etc}`` is the config directory."""

    id: str
    problems: tuple[str, ...]
    daemon: str = ""
    jobs: str = DEFAULT_JOB
    raw: str | None = None


REL = " (relative paths resolve against the config file's directory)"

CONFIG_CASES = [
    ConfigCase(
        "unknown-daemon-key",
        (
            "daemon.fsynk: unknown key 'fsynk'; did you mean 'fsync'? "
            f"(known keys: {known(DaemonConfig)})",
        ),
        daemon='fsynk = "always"',
    ),
    ConfigCase(
        "unknown-job-key",
        (
            "heartbeat[inbox].evry: unknown key 'evry'; did you mean 'every'? "
            f"(known keys: {known(HeartbeatConfig)})",
            'heartbeat[inbox]: has no schedule; set every = "30m" or cron = "*/15 * * * *"',
        ),
        jobs=job(every="", evry='"30m"'),
    ),
    ConfigCase(
        "misspelled-section",
        (
            "deamon: unknown key 'deamon'; did you mean 'daemon'? "
            "(known keys: daemon, heartbeat, cluster)",
        ),
        raw='[deamon]\nfsync = "turn"\n',
    ),
    ConfigCase(
        "duration-without-unit",
        (
            'heartbeat[inbox].every: expected a duration string with a unit, like "30s" or '
            '"30m", got integer 30',
        ),
        jobs=job(every="30"),
    ),
    ConfigCase(
        "quoted-integer",
        (
            'daemon.model_max_retries: expected an integer, got string "3"; '
            "write the number without quotes",
        ),
        daemon='model_max_retries = "3"',
    ),
    ConfigCase(
        "boolean-for-a-choice",
        ('heartbeat[inbox].catch_up: expected one of "skip", "once", got boolean true',),
        jobs=job(catch_up="true"),
    ),
    ConfigCase(
        "string-for-an-array",
        ('heartbeat[inbox].allowed_tools: expected an array, got string "Bash"',),
        jobs=job(allowed_tools='"Bash"'),
    ),
    ConfigCase(
        "unknown-choice",
        ('daemon.fsync: expected one of "always", "turn", "never", got string "sometimes"',),
        daemon='fsync = "sometimes"',
    ),
    ConfigCase(
        "bad-duration",
        (
            "daemon.turn_timeout: bad duration '10 minutes': 10 has no unit; expected a number "
            'followed by ms, s, m, h or d, like "30m" or "1h30m"',
        ),
        daemon='turn_timeout = "10 minutes"',
    ),
    ConfigCase(
        "negative-number",
        ("daemon.model_max_retries: must be at least 0, got integer -1",),
        daemon="model_max_retries = -1",
    ),
    ConfigCase(
        "interval-too-short",
        ("heartbeat[inbox].every: 0s is too short: heartbeats must be at least 1s apart",),
        jobs=job(every='"0s"'),
    ),
    ConfigCase(
        "interval-so-long-the-scheduler-overflows",
        ("heartbeat[inbox].every: 36500d is too long: heartbeats must be at most 366d apart",),
        jobs=job(every='"36500d"'),
    ),
    ConfigCase(
        "cron-value-out-of-range",
        (
            "heartbeat[inbox].cron: bad cron expression '*/61 * * * *': Error validating "
            "expression '*/61': the step value (61) is higher than the total range of the "
            "expression (59); expected five fields (minute hour day-of-month month "
            'day-of-week), like "*/15 8-18 * * 1-5"',
        ),
        jobs=job(every="", cron='"*/61 * * * *"'),
    ),
    ConfigCase(
        "cron-three-fields",
        (
            "heartbeat[inbox].cron: bad cron expression '0 9 *': Wrong number of fields; got 3, "
            "expected 5; expected five fields (minute hour day-of-month month day-of-week), "
            'like "*/15 8-18 * * 1-5"',
        ),
        jobs=job(every="", cron='"0 9 *"'),
    ),
    ConfigCase(
        "cron-weekday-8",
        (
            "heartbeat[inbox].cron: bad cron expression '0 9 * * 8': cannot read day-of-week "
            "'8'; use 0-7 (0 and 7 are Sunday) or sun-sat, ranges low to high, like 1-5 or "
            "mon,wed,fri",
        ),
        jobs=job(every="", cron='"0 9 * * 8"'),
    ),
    ConfigCase(
        "cron-never-fires",
        (
            "heartbeat[inbox].cron: cron expression '0 9 31 2 *' never fires: no date has "
            "that day of the month in those months",
        ),
        jobs=job(every="", cron='"0 9 31 2 *"'),
    ),
    ConfigCase(
        "unknown-timezone",
        (
            'heartbeat[inbox].timezone: unknown time zone "Europe/Berln": expected an IANA '
            'name like "Europe/Berlin" or "UTC"; did you mean "Europe/Berlin"?',
        ),
        jobs=job(every="", cron='"0 9 * * 1-5"', timezone='"Europe/Berln"'),
    ),
    ConfigCase(
        "timezone-without-cron",
        (
            "heartbeat[inbox].timezone: only applies to cron schedules, active_hours and "
            "daily_budget_usd; every alone ignores time zones",
        ),
        jobs=job(timezone='"Europe/Berlin"'),
    ),
    ConfigCase(
        "every-and-cron",
        ("heartbeat[inbox]: has both every and cron; set exactly one",),
        jobs=job(cron='"0 9 * * *"'),
    ),
    ConfigCase(
        "jitter-not-shorter-than-every",
        ("heartbeat[inbox].jitter: 30m must be shorter than every (30m)",),
        jobs=job(jitter='"30m"'),
    ),
    ConfigCase(
        "bad-active-hours",
        (
            "heartbeat[inbox].active_hours: bad active_hours '25:00-26:00': 25:00 is not a time "
            'of day (00:00 to 23:59; "24:00" only as the end)',
        ),
        jobs=job(active_hours='"25:00-26:00"'),
    ),
    ConfigCase(
        "duplicate-job-name",
        ("heartbeat[inbox]: duplicate job name 'inbox': [[heartbeat]] #1 and #2 both use it",),
        jobs=DEFAULT_JOB + "\n" + job(every='"1h"'),
    ),
    ConfigCase(
        "bad-job-name",
        ("heartbeat[#1].name: bad job name \"in box\": use 1 to 64 letters, digits, '_' or '-'",),
        jobs=job(name='"in box"'),
    ),
    ConfigCase(
        "no-prompt",
        ('heartbeat[inbox]: has no prompt; set prompt = "..." or prompt_file = "HEARTBEAT.md"',),
        jobs=job(prompt_file=""),
    ),
    ConfigCase(
        "missing-prompt-file",
        (f"heartbeat[inbox].prompt_file: prompt file {{etc}}/HEARTBAET.md does not exist{REL}",),
        jobs=job(prompt_file='"HEARTBAET.md"'),
    ),
    ConfigCase(
        "prompt-file-is-a-directory",
        ("heartbeat[inbox].prompt_file: prompt file {etc}/work is a directory, not a file",),
        jobs=job(prompt_file='"work"'),
    ),
    ConfigCase(
        "prompt-file-not-utf8",
        (
            "heartbeat[inbox].prompt_file: prompt file {etc}/latin1.md is not UTF-8 text "
            "(byte 0xe9 on line 2)",
        ),
        jobs=job(prompt_file='"latin1.md"'),
    ),
    ConfigCase(
        "cwd-does-not-exist",
        (f"heartbeat[inbox].cwd: directory {{etc}}/agents/inbox does not exist{REL}",),
        jobs=job(cwd='"agents/inbox"'),
    ),
    ConfigCase(
        "cwd-is-a-file",
        (f"heartbeat[inbox].cwd: {{etc}}/notes.txt is not a directory{REL}",),
        jobs=job(cwd='"notes.txt"'),
    ),
    ConfigCase(
        "state-dir-is-a-file",
        ("daemon.state_dir: {etc}/notes.txt is a file, not a directory",),
        raw='[daemon]\nstate_dir = "notes.txt"\nruntime_dir = "run"\nkey_file = "vigil.key"\n',
    ),
    ConfigCase(
        "state-dir-inside-runtime-dir",
        (
            "daemon.state_dir: must not be inside runtime_dir {etc}/run, which is wiped at "
            "reboot; journals would be lost",
        ),
        raw='[daemon]\nstate_dir = "run/state"\nruntime_dir = "run"\nkey_file = "vigil.key"\n',
    ),
    ConfigCase(
        "runtime-dir-inside-state-dir",
        (
            "daemon.runtime_dir: must not be inside state_dir {etc}/var: the runtime directory "
            "holds plaintext and is wiped, the state directory is kept",
        ),
        raw='[daemon]\nstate_dir = "var"\nruntime_dir = "var/run"\nkey_file = "vigil.key"\n',
    ),
    ConfigCase(
        "tilde-path",
        ("daemon.key_file: '~/vigil.key': '~' is not expanded here; write the full path",),
        raw='[daemon]\nstate_dir = "/var/lib/x"\nruntime_dir = "/run/x"\n'
        'key_file = "~/vigil.key"\n',
    ),
    ConfigCase(
        "heartbeat-single-brackets",
        (
            "heartbeat: expected [[heartbeat]] blocks (an array of tables, with double "
            "brackets), got a table",
        ),
        raw='[heartbeat]\nname = "inbox"\nevery = "30m"\n',
    ),
    ConfigCase(
        "file-sink-without-path",
        ("heartbeat[inbox].sink[#1].path: is required for a file sink",),
        jobs=DEFAULT_JOB + '[[heartbeat.sink]]\ntype = "file"\n',
    ),
    ConfigCase(
        "webhook-not-http",
        (
            "heartbeat[inbox].sink[#1].url: bad url ftp://example.org/…: expected "
            "http://host[:port]/path or https://...",
        ),
        jobs=DEFAULT_JOB + '[[heartbeat.sink]]\ntype = "webhook"\nurl = "ftp://example.org/hook"\n',
    ),
    # Secrets in webhook URLs and headers: an error names the URL redacted (the path
    # holds a Slack or Discord token), never a header's value.
    ConfigCase(
        "webhook-with-userinfo",
        (
            "heartbeat[inbox].sink[#1].url: bad url https://hooks.example.org/…: a user name or "
            "password in the URL is refused (it would be sent and shown in clear); put "
            "credentials in headers",
        ),
        jobs=DEFAULT_JOB
        + '[[heartbeat.sink]]\ntype = "webhook"\n'
        + 'url = "https://bot:hunter2@hooks.example.org/services/T0/B0/SECRET"\n',
    ),
    ConfigCase(
        "webhook-bad-port",
        (
            "heartbeat[inbox].sink[#1].url: bad url https://hooks.example.org:70000/…: the port "
            "must be a number from 1 to 65535",
        ),
        jobs=DEFAULT_JOB
        + '[[heartbeat.sink]]\ntype = "webhook"\n'
        + 'url = "https://hooks.example.org:70000/services/T0/B0/SECRET"\n',
    ),
    ConfigCase(
        "webhook-bad-header-name",
        (
            "heartbeat[inbox].sink[#1].headers: bad header name 'X Token': use letters, digits "
            "and !#$%&'*+-.^_`|~ (no spaces or colons)",
        ),
        jobs=DEFAULT_JOB
        + '[[heartbeat.sink]]\ntype = "webhook"\nurl = "https://hooks.example.org/x"\n'
        + 'headers = { "X Token" = "SECRET" }\n',
    ),
    ConfigCase(
        "webhook-header-value-with-newline",
        (
            "heartbeat[inbox].sink[#1].headers.Authorization: the value contains a line break "
            "or control character (not shown)",
        ),
        jobs=DEFAULT_JOB
        + '[[heartbeat.sink]]\ntype = "webhook"\nurl = "https://hooks.example.org/x"\n'
        + 'headers = { Authorization = "Bearer SECRET\\r\\nX-Evil: 1" }\n',
    ),
    ConfigCase(
        "toml-syntax-error",
        ("TOML syntax error at line 2, column 9: Invalid value",),
        raw="[daemon]\nfsync = turn\n",
    ),
    ConfigCase(
        "three-problems-at-once",
        (
            'daemon.fsync: expected one of "always", "turn", "never", got string "alwayz"; '
            'did you mean "always"?',
            "heartbeat[inbox].every: bad duration '5 min': 5 has no unit; expected a number "
            'followed by ms, s, m, h or d, like "30m" or "1h30m"',
            f"heartbeat[inbox].cwd: directory {{etc}}/wrok does not exist{REL}",
        ),
        daemon='fsync = "alwayz"',
        jobs=job(every='"5 min"', cwd='"wrok"'),
    ),
]


def test_the_catalogue_starts_from_a_valid_config(etc: Etc) -> None:
    """Each case breaks one thing in this file, which loads as it is."""
    config = load_config(etc.write())
    assert [j.name for j in config.heartbeats] == ["inbox"]
    assert len(CONFIG_CASES) >= 20


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_a_broken_config_is_refused_with_one_clear_line_per_problem(
    etc: Etc, case: ConfigCase
) -> None:
    path = etc.write(daemon=case.daemon, jobs=case.jobs, raw=case.raw)
    before = etc.tree()
    done = run_vigil("run", "--config", str(path), cwd=etc.root)
    lines = [f"{path}: {p.replace('{etc}', str(etc.dir))}" for p in case.problems]
    assert (done.returncode, done.stderr) == (CONFIG_ERROR, error_lines(*lines))
    assert done.stdout == ""
    assert "SECRET" not in done.stderr and "hunter2" not in done.stderr
    assert etc.tree() == before  # no state or runtime directory, lock, journal or mirror


@pytest.mark.parametrize("kind", ["fifo", "device", "over-the-sdk-buffer"])
def test_a_prompt_file_that_cannot_be_sent_is_refused_at_load(etc: Etc, kind: str) -> None:
    """A FIFO would block the load (and a reload) forever, a device never ends, and a
    prompt over the SDK's 1 MiB message buffer would fail every beat as cli_died."""
    if kind == "fifo":  # outside etc: the tree snapshot would block reading it too
        prompt = Path(tempfile.mkdtemp(prefix="vigil-fifo-")) / "prompt.fifo"
        os.mkfifo(prompt)
        problem = f"prompt file {prompt} is not a regular file (a FIFO, socket or device)"
        key = "prompt_file"
    elif kind == "device":
        prompt = Path("/dev/zero")
        problem = f"prompt file {prompt} is not a regular file (a FIFO, socket or device)"
        key = "prompt_file"
    else:
        prompt = etc.dir / "huge.md"
        prompt.write_text("x" * 1_000_000)
        problem = (
            "the prompt is 1000002 bytes as sent (JSON); the Agent SDK's message buffer is "
            "1048576 bytes, so at most 983040 fit"
        )
        key = "prompt_file"
    path = etc.write(jobs=job(prompt_file=json.dumps(str(prompt))))
    before = etc.tree()
    done = run_vigil("run", "--config", str(path), cwd=etc.root, timeout=60)
    assert (done.returncode, done.stderr) == (
        CONFIG_ERROR,
        error_lines(f"{path}: heartbeat[inbox].{key}: {problem}"),
    )
    assert etc.tree() == before


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("missing", "config file does not exist"),
        ("directory", "config file is a directory, not a file"),
        ("not-utf8", "config file is not UTF-8 text (byte 0xff on line 2)"),
    ],
)
def test_an_unreadable_config_file_is_named(etc: Etc, case: str, problem: str) -> None:
    path = {"missing": etc.dir / "vigil.tmol", "directory": etc.dir / "work"}.get(case, etc.config)
    if case == "not-utf8":
        etc.config.write_bytes(b'[daemon]\nfsync = "\xff"\n')
    before = etc.tree()
    done = run_vigil("run", "--config", str(path), cwd=etc.root)
    assert (done.returncode, done.stderr) == (CONFIG_ERROR, error_lines(f"{path}: {problem}"))
    assert etc.tree() == before


def test_a_state_dir_that_cannot_be_created_is_named(etc: Etc) -> None:
    """Tests run as root, so the directory is put where nobody may create one: sysfs."""
    target = Path("/sys/vigil-faults-state")
    try:
        target.mkdir()
    except OSError as exc:
        reason = exc.strerror
    else:
        target.rmdir()
        pytest.fail("sysfs accepted a new directory; this test needs one that refuses")
    text = etc.write().read_text().replace(str(etc.state_dir), str(target))
    etc.config.write_text(text)
    before = etc.tree()
    done = run_vigil("run", "--config", str(etc.config), cwd=etc.root)
    assert (done.returncode, done.stderr) == (
        CONFIG_ERROR,
        error_lines(
            f"{etc.config}: daemon.state_dir: {target} cannot be created or written ({reason})"
        ),
    )
    assert etc.tree() == before


# ---------------------------------------------------------------- key files


def _truncate(etc: Etc) -> None:
    whole = etc.key.read_bytes()
    etc.key.write_bytes(whole[: len(whole) // 2])


def _empty(etc: Etc) -> None:
    etc.key.write_bytes(b"")


def _newer(etc: Etc) -> None:
    doc = json.loads(etc.key.read_text())
    etc.key.write_text(json.dumps({**doc, "version": 2}))


def _other_file(etc: Etc) -> None:
    etc.key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n")


def _open_mode(etc: Etc) -> None:
    etc.key.chmod(0o644)


def _missing(etc: Etc) -> None:
    etc.key.unlink()


def _directory(etc: Etc) -> None:
    etc.key.unlink()
    etc.key.mkdir(mode=0o700)


KEY_CASES = {
    "missing": (
        _missing,
        "does not exist (create one with `vigil key generate PATH`)",
    ),
    "group-readable": (
        _open_mode,
        "is accessible by group or others (mode 0644); run `chmod 600 {key}`",
    ),
    "truncated": (_truncate, "is not a vigil keyring (not valid JSON; truncated or wrong file?)"),
    "empty": (_empty, "is empty (truncated?); restore it from a backup"),
    "not-a-keyring": (
        _other_file,
        "is not a vigil keyring (not valid JSON; truncated or wrong file?)",
    ),
    "newer-keyring-version": (
        _newer,
        "written by a newer vigil (keyring version 2); this vigil reads version 1. "
        "Upgrade vigil to use it",
    ),
    "a-directory": (_directory, "is not a regular file"),
}


@pytest.mark.parametrize("case", list(KEY_CASES))
def test_a_bad_key_file_is_refused_before_anything_is_created(etc: Etc, case: str) -> None:
    spoil, problem = KEY_CASES[case]
    path = etc.write()
    spoil(etc)
    before = etc.tree()
    message = f"key file {etc.key}: " + problem.replace("{key}", str(etc.key))
    done = run_vigil("run", "--config", str(path), cwd=etc.root)
    assert (done.returncode, done.stderr) == (KEY_ERROR, error_lines(message))
    assert etc.tree() == before
    assert not etc.state_dir.exists() and not etc.runtime_dir.exists()
    if case != "missing":  # rotating a bad key file refuses too, and leaves it alone
        rotate = run_vigil("key", "rotate", str(etc.key), cwd=etc.root)
        assert (rotate.returncode, rotate.stderr) == (KEY_ERROR, error_lines(message))
        assert etc.tree() == before


def test_key_generate_never_overwrites_a_key_file(etc: Etc) -> None:
    before = etc.tree()
    done = run_vigil("key", "generate", str(etc.key), cwd=etc.root)
    assert (done.returncode, done.stderr) == (
        KEY_ERROR,
        error_lines(f"key file {etc.key}: already exists; use `vigil key rotate` to add a key"),
    )
    assert etc.tree() == before


# ---------------------------------------------------------------- journals
#
# A real daemon writes the journals once per module: two jobs beat a few times, then
# it is SIGKILLed in the middle of a turn of "other", which so has an open turn that
# the next start would heal (journal a turn_interrupted record). Each test copies
# that site, breaks one thing, and checks that a refused start journals nothing: not
# that healing record, not an empty journal for a job that has none yet.

WRITER_JOBS = [
    Job("other", "other beat [slow:150]", every="1s"),
    Job("inbox", "inbox beat", every="1s"),
]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("written")
    model = LoopbackModel()
    site = Site(root, model)
    try:
        site.write_config(WRITER_JOBS)
        daemon = site.start()
        for name in ("inbox", "other"):
            for _ in range(2):
                daemon.wait_event("turn_completed", 90, job=name, start=daemon.count())
        daemon.kill_on(
            lambda x: x.get("event") == "delta" and x.get("job") == "other",
            60,
            what="a delta of other",
        )
    finally:
        site.close()
        model.stop()
    for log in root.glob("daemon-*.log"):
        log.unlink()
    yield root


@dataclass
class Copy:
    root: Path
    config: Path
    key: Path
    state_dir: Path

    def journal(self, name: str) -> Path:
        return self.state_dir / "conversations" / f"{name}.jsonl"

    def tree(self) -> dict[str, str]:
        """The state directory (the lock file holds the last starter's PID) and the
        config directory's files."""
        state = snapshot(self.state_dir, ignore_content=frozenset({".vigil.lock"}))
        config = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.root.iterdir())
            if p.is_file()
        }
        return {**{f"state/{k}": v for k, v in state.items()}, **config}

    def vigil(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_vigil(*args, "--config", str(self.config), cwd=self.root)


def _sockets(directory: str, names: list[str]) -> list[str]:
    """The sockets a SIGKILLed daemon and its CLI left behind cannot be copied."""
    return [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(directory, n)).st_mode)]


@pytest.fixture
def copy(written: Path, tmp_path: Path) -> Copy:
    root = tmp_path / "site"
    shutil.copytree(written, root, symlinks=True, ignore=_sockets)
    config = root / "vigil.toml"
    # The conversations were started in the original site's work directory: keep it,
    # else the copy's jobs would be refused as moved (cwd_changed) instead of healed.
    # And a third job whose journal does not exist yet: a refused start must not create it.
    text = config.read_text().replace('cwd = "work"', f'cwd = "{written / "work"}"')
    daemon, jobs = text.split("[[heartbeat]]", 1)
    fresh = '[[heartbeat]]\nname = "fresh"\nevery = "1h"\nprompt = "new"\ncwd = "work"\n\n'
    config.write_text(f"{daemon}{fresh}[[heartbeat]]{jobs}")  # first in the file
    return Copy(root, config, root / "vigil.key", root / "state")


def test_the_written_site_has_an_open_turn_to_heal(copy: Copy) -> None:
    """The premise of the journal cases: healing "other" would journal a record."""
    keyring = Keyring.load(copy.key)
    events = list(read_events(copy.journal("other"), "other", keyring))
    turns = fold(events).turns
    assert turns[-1].status == "interrupted" and not turns[-1].journaled_end
    started_in = [e["cwd"] for e in events if e.get("type") == "session_bound"]
    assert started_in[-1] == str(load_config(copy.config).job("other").cwd)
    assert not copy.journal("fresh").exists()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _tamper(path: Path, index: int) -> None:
    """Change one base64 character of record ``index``'s ciphertext (a bit-flip)."""
    lines = _lines(path)
    record = json.loads(lines[index])
    data = record["d"]
    record["d"] = data[:20] + ("A" if data[20] != "A" else "B") + data[21:]
    lines[index] = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    path.write_bytes(b"".join(lines))


def _from_newer_vigil(path: Path, index: int) -> None:
    lines = _lines(path)
    lines[index] = lines[index].replace(b'{"v":1,', b'{"v":2,', 1)
    path.write_bytes(b"".join(lines))


def _verify(copy: Copy) -> tuple[int, dict[str, object]]:
    done = copy.vigil("verify", "--json")
    report: dict[str, object] = json.loads(done.stdout)
    return done.returncode, report


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["other", "inbox"])
def test_a_tampered_middle_record_stops_run_history_and_verify(copy: Copy, name: str) -> None:
    """ "other" is read first: its refusal must not leave the mirror half rebuilt.
    "inbox" is read second: "other" must not have been healed by then."""
    path = copy.journal(name)
    count = len(_lines(path))
    middle = count // 2  # line middle + 1, sequence middle + 1
    _tamper(path, middle)
    line = middle + 1
    before = copy.tree()
    message = error_lines(
        f"journal {path}: line {line} (sequence {line}): authentication failed: the record "
        "was altered or sealed with another key; records after it are intact, so this is "
        "corruption or tampering, not a torn write. Nothing was changed; restore the file "
        "from a backup or move it aside to start that conversation afresh"
    )

    run = copy.vigil("run")
    assert (run.returncode, run.stderr) == (JOURNAL_ERROR, message)
    assert copy.tree() == before  # "other" not healed, "fresh" not created, nothing cut
    history = copy.vigil("history", name)
    assert (history.returncode, history.stderr) == (JOURNAL_ERROR, message)
    tail = copy.vigil("tail", name)
    assert (tail.returncode, tail.stderr) == (JOURNAL_ERROR, message)

    code, report = _verify(copy)
    assert code == VERIFY_FAILED
    assert report["findings"] == [
        {
            "path": str(path),
            "kind": "corrupt",
            "line": line,
            "seq": line,
            "detail": "authentication failed: the record was altered or sealed with another key",
        }
    ]
    mirror = report["mirror"]
    assert isinstance(mirror, dict)
    # The refused start left the derived mirror as a rebuild would: the good
    # conversations are all in it, so verify finds nothing else wrong.
    assert (mirror["state"], mirror["differences_total"], mirror["problem"]) == (
        "compared",
        0,
        None,
    )
    plain = copy.vigil("verify")
    assert f"  {path}: line {line} (sequence {line}) corrupt: authentication failed" in plain.stdout
    assert plain.stdout.endswith("FAILED\n")
    assert copy.tree() == before


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_journal_from_a_newer_vigil_is_refused_and_kept(copy: Copy) -> None:
    path = copy.journal("inbox")
    last = len(_lines(path)) - 1  # its newest record: a newer vigil appended it
    _from_newer_vigil(path, last)
    before = copy.tree()
    message = error_lines(
        f"journal {path}: line {last + 1}: written by a newer vigil (format 2); this vigil "
        "reads formats up to 1. Nothing was changed; upgrade vigil to read it"
    )
    run = copy.vigil("run")
    assert (run.returncode, run.stderr) == (JOURNAL_ERROR, message)
    assert copy.tree() == before  # the newer record is not taken for a torn tail and cut
    history = copy.vigil("history", "inbox")
    assert (history.returncode, history.stderr) == (JOURNAL_ERROR, message)
    code, report = _verify(copy)
    assert code == VERIFY_FAILED
    assert report["findings"] == [
        {
            "path": str(path),
            "kind": "newer_format",
            "line": last + 1,
            "seq": None,
            "detail": "written by a newer vigil (format 2); this vigil reads formats up to 1",
        }
    ]
    assert copy.tree() == before


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_wrong_key_file_is_refused_and_the_journals_kept(copy: Copy) -> None:
    right = Keyring.load(copy.key)
    copy.key.unlink()
    wrong = generate_key_file(copy.key)
    before = copy.tree()
    other = copy.journal("other")  # read first: the first job with a journal
    run = copy.vigil("run")
    assert (run.returncode, run.stderr) == (
        KEY_ERROR,
        error_lines(
            f"journal {other}: written with key id {right.current_id!r}, which the keyring "
            f"{copy.key} cannot decrypt (wrong key file?); nothing was changed"
        ),
    )
    assert wrong.current_id != right.current_id
    assert copy.tree() == before


# ---------------------------------------------------------------- truncation and rollback
#
# Deleting records leaves nothing that fails to authenticate: state_dir/heads (a sealed
# commitment to every journal's last sequence, size and last record) is what catches it.


# Records written after the last commitment (the daemon was killed mid-turn) are what a
# crash may lose anyway; each case removes committed ones. ``seq``: the committed head.


def _drop_last_records(copy: Copy, seq: int) -> str:
    path = copy.journal("inbox")
    path.write_bytes(b"".join(_lines(path)[: seq - 2]))
    return "conversations/inbox.jsonl"


def _drop_last_turn(copy: Copy, seq: int) -> str:
    path = copy.journal("inbox")
    keyring = Keyring.load(copy.key)
    events = list(read_events(path, "inbox", keyring))[:seq]
    last_start = max(i for i, e in enumerate(events) if e.get("type") == "turn_started")
    path.write_bytes(b"".join(_lines(path)[:last_start]))
    return "conversations/inbox.jsonl"


def _drop_journal(copy: Copy, _seq: int) -> str:
    copy.journal("inbox").unlink()
    return "conversations/inbox.jsonl"


def _drop_transcript(copy: Copy, _seq: int) -> str:
    transcript = max((copy.state_dir / "transcripts").glob("*.jsonl"), key=os.path.getsize)
    transcript.unlink()
    return f"transcripts/{transcript.name}"


ROLLBACKS = {
    "last-records": (_drop_last_records, "truncated"),
    "last-turn": (_drop_last_turn, "truncated"),
    "whole-journal": (_drop_journal, "missing"),
    "transcript": (_drop_transcript, "missing"),
}


@pytest.mark.e2e
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(ROLLBACKS))
def test_removed_records_or_journals_are_refused_by_run_and_verify(copy: Copy, case: str) -> None:
    from daemon.journal.heads import HeadsFile  # noqa: PLC0415  # only these tests need it

    committed = HeadsFile(copy.state_dir, Keyring.load(copy.key)).load()
    assert committed is not None  # the daemon that wrote the site committed its heads
    spoil, kind = ROLLBACKS[case]
    key = spoil(copy, committed["conversations/inbox.jsonl"].seq)
    head = committed[key]
    before = copy.tree()
    heads = copy.state_dir / "heads"
    run = copy.vigil("run")
    assert run.returncode == JOURNAL_ERROR, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0] == (
        f"vigil: error: journals in {copy.state_dir} are behind what {heads} committed to "
        "(truncation or rollback); nothing was changed:"
    )
    if kind == "missing":
        assert lines[1] == (
            f"  {key}: missing; it was committed with {head.seq} records ({head.size} bytes)"
        )
    else:
        size = (copy.state_dir / key).stat().st_size
        assert lines[1] == (
            f"  {key}: holds {size} bytes; it was committed with {head.seq} records "
            f"({head.size} bytes): records were removed (truncation or a restored backup)"
        )
    assert lines[2:] == [
        f"Restore them from a backup; if they were removed or restored on purpose, delete "
        f"{heads} and start again"
    ]
    assert copy.tree() == before  # nothing healed, recreated or committed
    code, report = _verify(copy)
    assert code == VERIFY_FAILED
    listed = report["findings"]
    assert isinstance(listed, list)
    findings = [f for f in listed if f["kind"] == kind]
    assert [(f["path"], f["seq"]) for f in findings] == [(str(copy.state_dir / key), head.seq)]
    assert copy.tree() == before


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_an_untouched_site_passes_verify_with_its_heads(copy: Copy) -> None:
    """The check can pass: a journal ahead of its head (the daemon was killed after
    writing records it had not committed yet) is what a crash leaves, not rollback."""
    _, report = _verify(copy)
    assert report["findings"] == []
