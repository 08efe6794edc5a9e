"""Device profiles: the thresholds a device class must meet, and how to measure them.

A profile is a TOML data file (``device_tests/profiles/<name>.toml``, or any path)::

    schema = 1
    name = "rpi5"
    device = "Raspberry Pi 5, 8 GB, Cortex-A76 x4, no accelerator"

    [source]
    kind = "estimate"          # or "measured" (calibrated on the device kind itself)
    basis = "where the numbers come from"

    [measurement]              # optional; these are the defaults
    warmup = 3
    min_queries = 30
    min_duration_s = 2.0

    [thresholds]               # every figure is optional; a figure left out is not run
    ttft_p95_ms = 400.0
    decode_tokens_per_s_p50 = 8.0
    vision_p95_ms = { "efficientnet-lite0" = 60.0 }

The schema is strict: an unknown key (a typo would switch a threshold off) and a
threshold that is not a positive number are refused, naming the key. The same
``thresholds`` and ``measurement`` tables are what a release carries per device class in
its signed config (``acceptance.device_classes.<class>``), validated by the same models.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device_tests.errors import ProfileError
from edge_agent.updates.acceptance import Measurement, Thresholds, describe_errors

__all__ = ["PROFILE_DIR", "Profile", "load_profile", "profile_names"]

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    kind: Literal["measured", "estimate"]
    basis: str = Field(min_length=1, max_length=4000)


class Profile(_Strict):
    schema_: Literal[1] = Field(alias="schema")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    device: str = Field(min_length=1, max_length=500)
    source: Source
    measurement: Measurement = Field(default_factory=Measurement)
    thresholds: Thresholds


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name (``rpi5``) or a profile file by path; ProfileError says
    what is wrong with it."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" or path.exists()):
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ProfileError(
                f"no profile named {name_or_path!r}; shipped profiles:"
                f" {', '.join(profile_names())} (or give a path to a .toml file)"
            )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ProfileError(f"cannot read profile {path}: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"profile {path} is not valid TOML: {e}") from e
    try:
        return Profile.model_validate(raw)
    except ValidationError as e:
        raise ProfileError(describe_errors(e, f"profile {path}")) from e
