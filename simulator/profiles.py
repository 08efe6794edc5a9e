"""What each simulated device is: its name, tags and hardware facts, as a function of its index.

A fleet is built from a *profile function* ``index -> DeviceProfile``, so a test or a
benchmark describes a mixed fleet in one line and gets the same fleet every time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from protocol import HardwareFacts
from simulator.errors import SetupError

HARDWARE_CLASSES: Mapping[str, HardwareFacts] = {
    "rpi5": HardwareFacts(arch="aarch64", os="linux", cpu_count=4, ram_mb=8192),
    "jetson-orin-nano": HardwareFacts(
        arch="aarch64", os="linux", cpu_count=6, ram_mb=8192, accelerators=["cuda"]
    ),
    "mac-m1": HardwareFacts(
        arch="arm64", os="darwin", cpu_count=8, ram_mb=16384, accelerators=["coreml"]
    ),
    "x86-ci": HardwareFacts(arch="x86_64", os="linux", cpu_count=2, ram_mb=4096),
}
"""Hardware facts by device class; a ``hw=<class>`` tag picks them (default ``x86-ci``)."""

DEFAULT_HARDWARE_CLASS = "x86-ci"
HARDWARE_TAG = "hw"

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$")
_VALUE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._:-]*)(?:\*([1-9][0-9]{0,3}))?$")


@dataclass(frozen=True)
class DeviceProfile:
    """The facts a device enrolls with."""

    name: str
    tags: tuple[str, ...]
    hardware: HardwareFacts


ProfileFunction = Callable[[int], DeviceProfile]


def device_name(index: int) -> str:
    return f"sim-{index:05d}"


def hardware_for(tags: Sequence[str]) -> HardwareFacts:
    """The hardware class named by a ``hw=`` tag, else the default class."""
    for tag in tags:
        key, _, value = tag.partition("=")
        if key == HARDWARE_TAG and value in HARDWARE_CLASSES:
            return HARDWARE_CLASSES[value]
    return HARDWARE_CLASSES[DEFAULT_HARDWARE_CLASS]


def uniform(tags: Sequence[str] = ()) -> ProfileFunction:
    """Every device gets the same tags (and the hardware its ``hw=`` tag names)."""
    fixed = tuple(tags)
    for tag in fixed:
        _check_tag(tag)
    hardware = hardware_for(fixed)

    def profile(index: int) -> DeviceProfile:
        return DeviceProfile(name=device_name(index), tags=fixed, hardware=hardware)

    return profile


@dataclass(frozen=True)
class TagDimension:
    """One tag key and its values, each repeated by its weight (a weighted cycle)."""

    key: str
    slots: tuple[str, ...]


@dataclass(frozen=True)
class TagSpec:
    """Tags spread over the fleet by index, every combination of values in turn.

    Written as one ``key=value[*weight],value[*weight]...`` string per key, e.g.
    ``["hw=rpi5*3,jetson-orin-nano", "store=lisbon,porto"]``: of every 8 consecutive
    devices, 6 are rpi5 and 2 Jetsons, and each hardware class is split evenly between
    the stores (the first key varies fastest). A ``hw=`` value that names a class in
    :data:`HARDWARE_CLASSES` sets the device's hardware facts. Call it with an index.
    """

    dimensions: tuple[TagDimension, ...]
    extra_tags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, specs: Sequence[str], extra_tags: Sequence[str] = ()) -> TagSpec:
        dimensions: list[TagDimension] = []
        seen: set[str] = set()
        for spec in specs:
            key, sep, values = spec.partition("=")
            if not sep or not key or not values:
                raise SetupError(
                    f"tag spec {spec!r} must look like 'key=value[*weight],value...',"
                    " e.g. 'hw=rpi5*3,jetson-orin-nano'"
                )
            if key in seen:
                raise SetupError(f"tag key {key!r} is given twice; give one spec per key")
            seen.add(key)
            slots: list[str] = []
            for item in values.split(","):
                m = _VALUE.match(item.strip())
                if m is None:
                    raise SetupError(
                        f"tag value {item!r} in {spec!r} must be letters, digits, '.', '_',"
                        " ':' or '-', optionally followed by '*<weight>'"
                    )
                _check_tag(f"{key}={m.group(1)}")
                slots.extend([m.group(1)] * int(m.group(2) or 1))
            dimensions.append(TagDimension(key=key, slots=tuple(slots)))
        for tag in extra_tags:
            _check_tag(tag)
        return cls(dimensions=tuple(dimensions), extra_tags=tuple(extra_tags))

    def tags(self, index: int) -> tuple[str, ...]:
        chosen: list[str] = []
        rest = index
        for dimension in self.dimensions:
            rest, slot = divmod(rest, len(dimension.slots))
            chosen.append(f"{dimension.key}={dimension.slots[slot]}")
        return (*chosen, *self.extra_tags)

    def __call__(self, index: int) -> DeviceProfile:
        tags = self.tags(index)
        return DeviceProfile(name=device_name(index), tags=tags, hardware=hardware_for(tags))


def _check_tag(tag: str) -> None:
    if not _TAG.match(tag):
        raise SetupError(
            f"tag {tag!r} is not a valid control-plane tag (1-64 of [A-Za-z0-9._:=-],"
            " starting alphanumeric)"
        )
