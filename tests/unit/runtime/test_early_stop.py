"""Which processes get the early stop handler: ``kingest start`` only."""

from __future__ import annotations

import pytest

from kingest.runtime.early_stop import is_start_command


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/local/bin/kingest", "start"],
        ["kingest", "start", "--processes", "2"],
        ["/srv/venv/lib/python3.11/site-packages/kingest/__main__.py", "start"],
    ],
)
def test_kingest_start_gets_it(argv: list[str]) -> None:
    assert is_start_command(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["/usr/local/bin/kingest"],
        ["/usr/local/bin/kingest", "migrate"],
        ["/usr/local/bin/kingest", "--version", "start"],
        ["/usr/bin/pytest", "start"],
        ["/srv/app/__main__.py", "start"],
    ],
)
def test_anything_else_does_not(argv: list[str]) -> None:
    assert not is_start_command(argv)
