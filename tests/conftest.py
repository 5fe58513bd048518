"""Options for the whole test run.

``--long`` runs the long variants of the fault-injection suite (``tests/faults``):
the same tests with more injections (for example 500 SIGKILLs of the daemon instead
of 50). ``scripts/reliability-report`` runs them and writes ``docs/RELIABILITY.md``.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long variants of the fault-injection suite (tests/faults)",
    )


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """Whether ``--long`` was given."""
    return bool(request.config.getoption("--long"))
