"""Build llama.cpp's own ``llama-server`` from the llama.cpp that llama-cpp-python vendors.

The serving benchmark (benchmarks/serving_llm.py) measures the agent against this peer, so
it must be the same llama.cpp the agent runs: the llama-cpp-python sdist of the version
bootstrap.py pins carries it under ``vendor/llama.cpp``. Steps, standard library only:

1. ``pip download --no-binary llama-cpp-python --no-deps llama-cpp-python==<version>``
   (the sdist);
2. unpack it and configure ``vendor/llama.cpp`` with cmake (Release, ``-DLLAMA_CURL=OFF``,
   static libraries so the binary stands alone, ``-march=native`` as the wheel's build);
3. build only the ``llama-server`` target (``-j2`` by default), showing progress;
4. cache the binary keyed by version and CPU beside the wheel
   (``<wheel cache>/llama-server-<version>-<cpu>/llama-server``), so it is built once.

    python3 scripts/build_llama_server.py [--wheel-cache DIR] [--jobs 2]

prints the binary's path on its last line. ``llama_server_binary()`` is the same for
Python callers.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bootstrap import LLAMA_VERSION, cpu_fingerprint, llama_cmake_args

DEFAULT_CACHE = Path(os.environ.get("OUTPOST_WHEEL_CACHE", Path.home() / ".cache/outpost/wheels"))
BINARY = "llama-server"


def say(message: str) -> None:
    print(f"[llama-server] {message}", file=sys.stderr, flush=True)


def cached_binary(cache_root: Path = DEFAULT_CACHE) -> Path:
    """Where this CPU's llama-server for the pinned version lives (it may not exist yet)."""
    return cache_root / f"llama-server-{LLAMA_VERSION}-{cpu_fingerprint()}" / BINARY


def run_logged(cmd: list[str], *, label: str, log: Path, cwd: Path | None = None) -> None:
    """Run a command into a log file; show cmake's ``[ NN%]`` progress every 15 s."""
    say(f"{label} ...")
    started = time.monotonic()
    progress = ["starting"]
    done = threading.Event()

    def ticker() -> None:
        while not done.wait(15):
            elapsed = int(time.monotonic() - started)
            say(f"  {label}: {progress[0]}, {elapsed} s elapsed")

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        with log.open("a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.Popen(
                cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if line.startswith("[") and "%]" in line[:8]:
                    progress[0] = line.split("]", 1)[0].strip("[ ") + " built"
            code = proc.wait()
    finally:
        done.set()
        thread.join()
    if code != 0:
        raise SystemExit(f"[llama-server] {label} failed (exit {code}); see {log}")
    say(f"{label}: done in {time.monotonic() - started:.0f} s")


def build(target: Path, jobs: int) -> Path:
    """Download the sdist, build llama-server from its vendored llama.cpp, install it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.parent / "build.log"
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work = Path(tmp)
        run_logged(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-binary",
                "llama-cpp-python",
                "--no-deps",
                "--dest",
                str(work),
                f"llama-cpp-python=={LLAMA_VERSION}",
            ],
            label=f"downloading the llama-cpp-python {LLAMA_VERSION} sdist",
            log=log,
        )
        sdists = sorted(work.glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise SystemExit(f"[llama-server] pip left no llama-cpp-python sdist in {work}")
        with tarfile.open(sdists[0]) as archive:
            archive.extractall(work, filter="data")
        sources = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
        if sources is None or not (sources / "CMakeLists.txt").exists():
            raise SystemExit(f"[llama-server] {sdists[0].name} has no vendor/llama.cpp")
        out = work / "build"
        run_logged(
            [
                "cmake",
                "-S",
                str(sources),
                "-B",
                str(out),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DGGML_NATIVE=ON",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_BUILD_SERVER=ON",
                # the same flags as the wheel (no AMX kernels where they crash)
                *shlex.split(llama_cmake_args()),
            ],
            label="configuring llama.cpp (cmake)",
            log=log,
        )
        run_logged(
            ["cmake", "--build", str(out), "--target", BINARY, "-j", str(jobs)],
            label=f"building llama-server (first time on this CPU only, -j{jobs})",
            log=log,
        )
        built = next(iter(sorted(out.rglob(BINARY))), None)
        if built is None or not built.is_file():
            raise SystemExit(f"[llama-server] the build produced no {BINARY}; see {log}")
        partial = target.with_suffix(".partial")
        shutil.copy2(built, partial)
        partial.chmod(0o755)
        partial.replace(target)  # atomic: a half-copied binary is never taken from the cache
    say(f"built {target}")
    return target


def llama_server_binary(cache_root: Path = DEFAULT_CACHE, jobs: int = 2) -> Path:
    """The cached llama-server for this CPU and version, building it on first use."""
    target = cached_binary(cache_root)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    if shutil.which("cmake") is None:
        raise SystemExit(
            "[llama-server] cmake is needed to build llama-server (apt-get install cmake)"
        )
    return build(target, jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--wheel-cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (-j)")
    args = parser.parse_args()
    print(llama_server_binary(args.wheel_cache, args.jobs))


if __name__ == "__main__":
    main()
