"""A real small filesystem for disk-full tests: a tmpfs mounted in a temp directory.

The tests run as root here (and in CI). Where ``mount`` is not permitted the test is
skipped naming that, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.requirements import missing


@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_bytes`` at ``path`` for the duration of the block."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        missing(
            "a small tmpfs (mount -t tmpfs, as root)",
            f"mounting one is not permitted here: {done.stderr.strip()}",
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, *, read_only: bool) -> None:
    mode = "ro" if read_only else "rw"
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(path: Path) -> int:
    """Write ``path`` until its filesystem is full; return how many bytes it took."""
    written = 0
    with path.open("wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * size
            while True:
                try:
                    n = f.write(block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
                written += n or 0
                if not n:
                    break
    return written


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
