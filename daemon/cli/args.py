"""Argument types shared by the commands: a NAME is checked like a job name before it
is ever joined to a path (``vigil history ../../etc/x`` is a usage error, exit 2)."""

from __future__ import annotations

import argparse

from daemon.config.fields import JOB_NAME_PATTERN


def job_name(value: str) -> str:
    if not JOB_NAME_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"bad job name {value!r}: use 1 to 64 letters, digits, '_' or '-'"
        )
    return value
