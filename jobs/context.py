"""A context budget per job: the CLI's environment that makes it compact at a limit (pure).

The bundled Claude CLI (2.1.330) compacts a conversation (summarises the history, and
the model sees the summary from then on) before it sends a request, when the usage the
API reported for the previous request (input + cache + output tokens) reaches

    E = min(W, model window) - min(model max output, 20000)
    threshold = E - 13000, or min(floor(E * P / 100), E - 13000) with P set

where W is ``CLAUDE_CODE_AUTO_COMPACT_WINDOW`` (read as at least 100000) and P is
``CLAUDE_AUTOCOMPACT_PCT_OVERRIDE`` (0 < P <= 100). Read from the CLI's code and measured
against the loopback model (docs: issue 14's findings). So for a limit L:

* L >= 67000: W = L + 33000 gives threshold = L;
* L < 67000: W = 100000 (its floor, E = 80000) and P = 100 * L / 80000 give threshold = L.

Both hold for models whose max output is at least 20000 tokens (current models) and
whose window is at least W. The CLI checks before each request, also inside a tool
loop, so one request overshoots L by at most what the last request added (one beat's
growth). Limits this cannot honour are refused (:func:`limit_problem`).
"""

from __future__ import annotations

__all__ = [
    "MAX_CONTEXT_LIMIT",
    "MIN_CONTEXT_LIMIT",
    "apply_compaction_env",
    "compaction_env",
    "limit_problem",
]

WINDOW_VAR = "CLAUDE_CODE_AUTO_COMPACT_WINDOW"
PCT_VAR = "CLAUDE_AUTOCOMPACT_PCT_OVERRIDE"
_WINDOW_FLOOR = 100_000  # the CLI reads a smaller window as this
_RESERVED = 20_000 + 13_000  # the CLI keeps min(max output, 20000) + 13000 below the window
# The CLI's own system prompt and tool definitions take several thousand tokens and a
# summary a few more: a smaller limit would compact at every beat.
MIN_CONTEXT_LIMIT = 20_000
# The largest model window is 1M tokens; above this the CLI compacts at its own threshold.
MAX_CONTEXT_LIMIT = 1_000_000 - _RESERVED


def limit_problem(limit: int) -> str | None:
    """Why ``limit`` cannot be honoured, or None."""
    if limit < MIN_CONTEXT_LIMIT:
        return (
            f"{limit} tokens is below {MIN_CONTEXT_LIMIT}: the CLI's own system prompt, tool "
            "definitions and a summary take about that much, so the conversation would be "
            "compacted at every beat"
        )
    if limit > MAX_CONTEXT_LIMIT:
        return (
            f"{limit} tokens is above {MAX_CONTEXT_LIMIT}: no model's context window (at most "
            "1M tokens) leaves room for it; the CLI compacts by itself before that"
        )
    return None


def compaction_env(limit: int) -> dict[str, str]:
    """The CLI environment variables that make it compact once the context reaches
    ``limit`` tokens (a limit :func:`limit_problem` accepts)."""
    if limit >= _WINDOW_FLOOR - _RESERVED:
        return {WINDOW_VAR: str(limit + _RESERVED)}
    # E = 80000 here, so P = 100 * L / 80000; half a token more keeps floor() at L
    # whatever the float rounding.
    return {WINDOW_VAR: str(_WINDOW_FLOOR), PCT_VAR: repr((limit + 0.5) / 800)}


def apply_compaction_env(env: dict[str, str], limit: int | None) -> dict[str, str]:
    """``env`` with the compaction settings for ``limit`` (None: the CLI's defaults; any
    setting of these variables passed through from vigil's own environment is kept)."""
    if limit is None:
        return env
    out = {k: v for k, v in env.items() if k not in (WINDOW_VAR, PCT_VAR)}
    out.update(compaction_env(limit))
    return out
