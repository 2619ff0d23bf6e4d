"""`scns up`: each child its own health and metrics port (one port serves one process), and
a spinner while the services come up."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from services.cli.up import System
from shared.settings import Settings


def ports_in_start_order(system: System, names: list[str]) -> list[int]:
    out = []
    for name in names:
        out.append(system._health_port(name))
        system.children.append(object())  # type: ignore[arg-type]  # as _spawn records it
    return out


def test_a_base_port_counts_up_in_start_order(tmp_path: Path) -> None:
    s = dataclasses.replace(Settings(), health_port=9100, data_dir=tmp_path)
    system = System(s, {}, workers=2, cpus=None, echo=False)
    names = ["registry", "scheduler", "reconciler", "executor-a", "executor-b"]
    assert ports_in_start_order(system, names) == [9100, 9101, 9102, 9103, 9104]
    assert system._health_port("scheduler") == 9101  # a restart keeps its port


def test_no_base_no_ports_unless_given(tmp_path: Path) -> None:
    s = dataclasses.replace(Settings(), health_port=0, data_dir=tmp_path)
    system = System(s, {}, workers=1, cpus=None, echo=False, health_ports={"executor": 4321})
    assert ports_in_start_order(system, ["registry", "executor"]) == [0, 4321]


def test_a_spinner_shows_the_wait_on_a_terminal_only(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    system = System(dataclasses.replace(Settings(), data_dir=tmp_path), {}, workers=2,
                    cpus=None, echo=True)
    with system._waiting() as status:  # piped: nothing
        status("waiting for the services: 1 of 2 worker(s) ready")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    with system._waiting() as status:
        status("waiting for the services: 1 of 2 worker(s) ready")
    assert "1 of 2 worker(s) ready" in capsys.readouterr().err
