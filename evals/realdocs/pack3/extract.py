"""Re-extract pack 3's texts from the packages that ship them.

    python -m evals.realdocs.pack3.extract [--check]

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
    Source("journalctl.1.txt", "man", "1 journalctl", "systemd", "252.39-1~deb12u2"),
    Source("systemd.service.5.txt", "man", "5 systemd.service", "systemd", "252.39-1~deb12u2"),
    Source("apt_preferences.5.txt", "man", "5 apt_preferences", "apt", "2.6.1"),
    Source("gzip.1.txt", "man", "1 gzip", "gzip", "1.12-1"),
    Source("python-subprocess.txt", "pydoc", "subprocess", "python", "3.11.7"),
    Source("python-csv.txt", "pydoc", "csv", "python", "3.11.7"),
    Source("paho-mqtt.md", "metadata", "paho-mqtt", "paho-mqtt", "2.2.0"),
)


def main(argv: list[str] | None = None) -> int:
    prog = "python -m evals.realdocs.pack3.extract"
    return run(SOURCES, DOCS, prog=prog, doc=__doc__, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
