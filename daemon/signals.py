"""SIGHUP before the daemon's event loop handles it: noted, never fatal.

``vigil run`` calls :func:`hold_sighup` first thing: a SIGHUP's default action is to
kill the process, and loading the config, the key and the journals takes a while. The
supervisor asks :func:`take_sighup` once its loop handler is installed and reloads
then, so a reload asked for during start-up is not lost either.
"""

from __future__ import annotations

import signal
from types import FrameType

_pending = False


def _note(_signum: int, _frame: FrameType | None) -> None:
    global _pending  # noqa: PLW0603  # a signal handler only sets state
    _pending = True


def hold_sighup() -> None:
    signal.signal(signal.SIGHUP, _note)


def take_sighup() -> bool:
    """Whether a SIGHUP came while held (and forget it)."""
    global _pending  # see _note
    was, _pending = _pending, False
    return was
