"""Build the agent-only distribution, ``outpost-agent``, and optionally a wheelhouse for it.

The repository's ``pyproject.toml`` describes the development distribution ``outpost``
(agent, control plane, converters, simulator). A device needs only ``edge_agent`` and
``protocol``: this script stages those two packages beside a generated ``pyproject.toml``
whose dependencies are the root project's base ``dependencies`` (the agent's runtime
closure) and whose extras are the root's agent-side extras, then runs ``python -m build``
without build isolation (no network: setuptools comes from this environment).

    python packaging/build_agent.py --out dist/agent
    python packaging/build_agent.py --out dist/agent --wheelhouse --extras llm,rag

``--wheelhouse`` also fills ``--out`` with every wheel the agent (and the named extras)
needs, so that ``pip install --no-index --find-links DIR outpost-agent`` works on a machine
with no network (``packaging/install.sh`` does exactly that). Run it on the same OS and CPU
architecture as the devices. ``--find-links`` adds local wheels (the llama-cpp-python wheel
that ``scripts/bootstrap.py`` caches: it is built for this CPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTION = "outpost-agent"
PACKAGES = ("edge_agent", "protocol")
# The root project's extras that a device may want; the others (control-plane, postgres,
# convert, dev) are not offered by the agent distribution at all.
AGENT_EXTRAS = ("llm", "vision", "tflite", "rag", "coreml")


def agent_project(root: dict[str, object]) -> dict[str, object]:
    """The ``[project]`` table of ``outpost-agent``, derived from the root project's."""
    project = root["project"]
    assert isinstance(project, dict)
    optional = project.get("optional-dependencies", {})
    assert isinstance(optional, dict)
    return {
        "name": DISTRIBUTION,
        "version": project["version"],
        "description": "Outpost edge agent: the device daemon (no control plane)",
        "requires-python": project["requires-python"],
        # an SPDX expression (setuptools>=77); the root still writes the older table form
        "license": _spdx(project["license"]),
        "dependencies": list(project["dependencies"]),
        "optional-dependencies": {k: list(optional[k]) for k in AGENT_EXTRAS if k in optional},
        "scripts": {"outpost-agent": "edge_agent.cli:main"},
    }


def _spdx(license_: object) -> str:
    if isinstance(license_, dict) and isinstance(license_.get("text"), str):
        return str(license_["text"])
    if isinstance(license_, str):
        return license_
    raise SystemExit(f"build_agent: cannot read the root project's license {license_!r}")


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def pyproject_text(project: dict[str, object]) -> str:
    lines = [
        "[build-system]",
        'requires = ["setuptools>=77"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
    ]
    tables: dict[str, dict[str, object]] = {}
    for key, value in project.items():
        if isinstance(value, dict):
            tables[key] = value
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines += ["", f"[project.{name}]"]
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    lines += [
        "",
        "[tool.setuptools.packages.find]",
        f"include = {_toml_value([f'{p}*' for p in PACKAGES])}",
        "",
    ]
    return "\n".join(lines)


def build_wheel(out: Path) -> Path:
    """Build ``outpost-agent``'s wheel into ``out``; return its path."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="outpost-agent-build-") as tmp:
        stage = Path(tmp)
        for package in PACKAGES:
            shutil.copytree(
                REPO / package, stage / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        (stage / "pyproject.toml").write_text(pyproject_text(agent_project(root)))
        (stage / "README.md").write_text("Outpost edge agent. See docs/packaging.md.\n")
        before = set(out.glob("*.whl"))
        subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
            cwd=stage,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    built = sorted(set(out.glob("outpost_agent-*.whl")) - before) or sorted(
        out.glob("outpost_agent-*.whl")
    )
    if not built:
        raise SystemExit(f"build_agent: no outpost_agent wheel appeared in {out}")
    return built[-1]


def fill_wheelhouse(wheel: Path, out: Path, extras: list[str], find_links: list[Path]) -> None:
    """Download (or take from ``find_links``) every wheel the agent needs into ``out``."""
    requirement = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"]
    cmd += ["--dest", str(out), "--find-links", str(out)]
    for link in find_links:
        cmd += ["--find-links", str(link)]
    subprocess.run([*cmd, requirement], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the wheels")
    parser.add_argument("--wheelhouse", action="store_true", help="add every dependency wheel")
    parser.add_argument("--extras", default="", help=f"agent extras: {','.join(AGENT_EXTRAS)}")
    parser.add_argument("--find-links", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e]
    unknown = sorted(set(extras) - set(AGENT_EXTRAS))
    if unknown:
        parser.error(f"unknown agent extras {unknown}; choose from {', '.join(AGENT_EXTRAS)}")
    wheel = build_wheel(args.out)
    if args.wheelhouse:
        fill_wheelhouse(wheel, args.out, extras, args.find_links)
    print(wheel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
