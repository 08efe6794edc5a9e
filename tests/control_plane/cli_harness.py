"""``outpost-cp`` API commands run against a real control plane on loopback (uvicorn in a
thread): the test drives the fleet through the app and the command line through HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from control_plane.cli import main
from tests.control_plane.conftest import ControlPlaneUnderTest, make_control_plane
from tests.live_server import serving


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def data(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@dataclass
class OperatorShell:
    """An operator at a terminal: ``run`` is one ``outpost-cp`` invocation with a token
    of ``role``, over HTTP to the live server."""

    cp: ControlPlaneUnderTest
    url: str
    tmp_path: Path
    capsys: pytest.CaptureFixture[str]

    def token_file(self, role: str = "admin") -> Path:
        path = self.tmp_path / f"{role}.token"
        if not path.exists():
            secret = self.cp.auth(role)["Authorization"].removeprefix("Bearer ")
            path.write_text(secret + "\n")
        return path

    def run(self, *argv: str, role: str = "admin", json_mode: bool = True) -> Run:
        prefix = ["--server", self.url, "--token-file", str(self.token_file(role))]
        if json_mode:
            prefix.append("--json")
        return self.bare(*prefix, *argv)

    def bare(self, *argv: str, environ: dict[str, str] | None = None) -> Run:
        """``outpost-cp argv`` exactly as given, with only ``environ`` in the environment."""
        self.capsys.readouterr()
        code = main(list(argv), environ=environ or {})
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)


@contextmanager
def operator_shell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[OperatorShell]:
    cp = make_control_plane(tmp_path)
    with cp.client, serving(cp.app) as url:
        yield OperatorShell(cp=cp, url=url, tmp_path=tmp_path, capsys=capsys)
