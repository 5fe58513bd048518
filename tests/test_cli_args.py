"""NAME arguments are checked like job names before they become file names."""

from __future__ import annotations

import pytest

from daemon.cli.main import main


@pytest.mark.parametrize(
    "argv",
    [
        ["history", "../../etc/passwd"],
        ["tail", "../x"],
        ["tail", "-f", "a/b"],
        ["export", ".."],
        ["fork", "../inbox", "new"],
        ["fork", "inbox", "../new"],
        ["beat", "in box"],
        ["rebuild", "x/../y"],
    ],
)
def test_a_name_that_is_not_a_job_name_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--config", "/nonexistent/vigil.toml"])
    assert info.value.code == 2
    bad = next(a for a in argv[1:] if not a.startswith("-") and a not in ("inbox", "new"))
    assert f"bad job name {bad!r}: use 1 to 64 letters, digits, '_' or '-'" in (
        capsys.readouterr().err
    )
