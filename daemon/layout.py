"""Where things live on disk, and the environment the CLI runs in.

State (persistent, encrypted only)::

    state_dir/conversations/<job>.jsonl   one journal per conversation
    state_dir/transcripts/<digest>.jsonl  the CLI's transcripts, via JournalSessionStore
    state_dir/.vigil.lock                 one daemon per state directory

Runtime (tmpfs under systemd; may vanish at reboot)::

    runtime_dir/claude/   CLAUDE_CONFIG_DIR: the CLI's own plaintext transcript copy
    runtime_dir/tmp/      TMPDIR for the CLI and the SDK (claude-resume-* materializations)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.fsutil import ensure_private_dir

PASSED_PREFIXES = ("ANTHROPIC_", "CLAUDE_CODE_")
PASSED_NAMES = ("PATH", "LANG", "LC_ALL", "TZ", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")


@dataclass(frozen=True)
class Layout:
    state_dir: Path
    runtime_dir: Path

    @property
    def conversations(self) -> Path:
        return self.state_dir / "conversations"

    @property
    def transcripts(self) -> Path:
        return self.state_dir / "transcripts"

    @property
    def claude_config(self) -> Path:
        return self.runtime_dir / "claude"

    @property
    def tmp(self) -> Path:
        return self.runtime_dir / "tmp"

    @property
    def home(self) -> Path:
        return self.runtime_dir / "home"

    def create(self) -> None:
        """Create every directory owner-only (0700), whatever the umask."""
        for d in (
            self.state_dir,
            self.conversations,
            self.transcripts,
            self.runtime_dir,
            self.claude_config,
            self.tmp,
            self.home,
        ):
            ensure_private_dir(d)

    def remove_resume_leftovers(self) -> list[Path]:
        """Conversation plaintext a killed daemon left in the runtime directory: the
        SDK's resume copies (``tmp/claude-resume-*``) and the CLI's own transcripts
        (``claude/projects/``). A resume never needs them: it is materialized from the
        encrypted transcript store."""
        removed = []
        leftovers = [*self.tmp.glob("claude-resume-*"), self.claude_config / "projects"]
        for leftover in leftovers:
            if not os.path.lexists(leftover):
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
        return removed

    def adopt_tmpdir(self) -> None:
        """Make this process's temporary files (the SDK's resume copies) land in runtime."""
        os.environ["TMPDIR"] = str(self.tmp)
        tempfile.tempdir = str(self.tmp)

    def cli_env(self, environ: Mapping[str, str], *, max_retries: int) -> dict[str, str]:
        """The CLI's environment: model access passed through, everything else pinned."""
        env = {
            k: v for k, v in environ.items() if k.startswith(PASSED_PREFIXES) or k in PASSED_NAMES
        }
        env.update(
            {
                "CLAUDE_CONFIG_DIR": str(self.claude_config),
                "TMPDIR": str(self.tmp),
                "HOME": str(self.home),
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "CLAUDE_CODE_MAX_RETRIES": str(max_retries),
            }
        )
        return env
