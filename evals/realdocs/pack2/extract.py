"""Re-extract pack 2's texts from the packages that ship them.

    python -m evals.realdocs.pack2.extract [--check]

The same rendering as pack 1 (``evals.realdocs.extract``: man pages at 80 columns without
hyphenation or justification and without overstrike, ``pydoc`` text with object addresses
replaced, a distribution's ``METADATA`` body, a file as it ships), pinned to the versions
in ``SOURCES``. ``--check`` compares instead of writing and exits 1 on a difference or a
missing or other version.
"""

from __future__ import annotations

import sys
from pathlib import Path

from evals.realdocs.extract import Source, run

DOCS = Path(__file__).resolve().parent / "docs"

SOURCES = (
    Source("tar.1.txt", "man", "1 tar", "tar", "1.34+dfsg-1.2+deb12u1"),
    Source("find.1.txt", "man", "1 find", "findutils", "4.9.0-4"),
    Source("xargs.1.txt", "man", "1 xargs", "findutils", "4.9.0-4"),
    Source("git-stash.1.txt", "man", "1 git-stash", "git-man", "1:2.39.5-0+deb12u3"),
    Source(
        "git-subtree.txt",
        "file",
        "/usr/share/doc/git/contrib/subtree/git-subtree.txt",
        "git",
        "1:2.39.5-0+deb12u3",
    ),
    Source("python-shutil.txt", "pydoc", "shutil", "python", "3.11.7"),
    Source("rich.md", "metadata", "rich", "rich", "15.0.0"),
)


def main(argv: list[str] | None = None) -> int:
    prog = "python -m evals.realdocs.pack2.extract"
    return run(SOURCES, DOCS, prog=prog, doc=__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
