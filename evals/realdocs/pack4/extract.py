"""Re-extract pack 4's texts from the packages that ship them.

    python -m evals.realdocs.pack4.extract [--check]

The same rendering as pack 1 (``evals.realdocs.extract``), pinned to the versions in
``SOURCES``. ``--check`` compares instead of writing and exits 1 on a difference or a
missing or other version.
"""

from __future__ import annotations

import sys
from pathlib import Path

from evals.realdocs.extract import Source, run

DOCS = Path(__file__).resolve().parent / "docs"

SOURCES = (
    Source("tmpfiles.d.5.txt", "man", "5 tmpfiles.d", "systemd", "252.39-1~deb12u2"),
    Source("mosquitto.conf.5.txt", "man", "5 mosquitto.conf", "mosquitto", "2.0.11-1.2+deb12u2"),
    Source("git-worktree.1.txt", "man", "1 git-worktree", "git-man", "1:2.39.5-0+deb12u3"),
    Source("ssh-keygen.1.txt", "man", "1 ssh-keygen", "openssh-client", "1:9.2p1-2+deb12u6"),
    Source("python-zipfile.txt", "pydoc", "zipfile", "python", "3.11.7"),
    Source("python-tempfile.txt", "pydoc", "tempfile", "python", "3.11.7"),
    Source("pyrate-limiter.md", "metadata", "pyrate-limiter", "pyrate-limiter", "4.6.0"),
)


def main(argv: list[str] | None = None) -> int:
    prog = "python -m evals.realdocs.pack4.extract"
    return run(SOURCES, DOCS, prog=prog, doc=__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
