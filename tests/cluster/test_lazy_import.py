"""The single-node file daemon never loads psycopg: only daemon/cluster imports it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_file_daemon_and_the_cli_do_not_import_psycopg() -> None:
    code = (
        "import sys, daemon.cli.main, daemon.runtime.supervisor, daemon.cluster;"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool'));"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
