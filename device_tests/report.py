"""Reporters: a table for people, JSON for tools, JUnit XML for CI systems."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from device_tests.runner import SuiteResult
from edge_agent.updates.acceptance import FigureResult, Status

__all__ = ["junit_xml", "table", "write_json", "write_junit"]

_MARK = {
    Status.PASS: "PASS",
    Status.FAIL: "FAIL",
    Status.INCONCLUSIVE: "INCONCLUSIVE",
    Status.NOT_MEASURED: "n/a",
}


def _interval(f: FigureResult) -> str:
    if f.estimate is None:
        return "-"
    return f"[{f.estimate.low:.4g}, {f.estimate.high:.4g}]"


def table(result: SuiteResult) -> str:
    """One line per figure: measured value, interval, threshold, verdict; then the device's
    load and temperature and the overall verdict."""
    rows = [("figure", "measured", "95% interval", "threshold", "n", "verdict")]
    for f in result.figures:
        op = "<=" if f.bound == "max" else ">="
        rows.append(
            (
                f.figure,
                "-" if f.value is None else f"{f.value:.4g} {f.unit}",
                _interval(f),
                f"{op} {f.threshold:g} {f.unit}",
                "-" if f.estimate is None else str(f.estimate.n),
                _MARK[f.status],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for f in result.figures:
        if f.note:
            lines.append(f"  {f.figure}: {f.note}")
    env = result.environment
    lines.append(
        f"profile {result.profile} (class {result.device_class}), workload"
        f" {result.workload_version}, {result.target}, {result.duration_s:.1f} s;"
        f" load {env.loadavg_before[0]:g} -> {env.loadavg_after[0]:g}, temperature"
        f" {_temp(env.temperature_c_before)} -> {_temp(env.temperature_c_after)}"
    )
    counts = result.counts()
    verdict = "PASSED" if result.passed else "NOT PASSED"
    lines.append(
        f"{verdict}: {counts['pass']} pass, {counts['fail']} fail,"
        f" {counts['inconclusive']} inconclusive, {counts['not_measured']} not measured"
    )
    return "\n".join(lines)


def _temp(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g} C"


def write_json(result: SuiteResult, path: Path) -> None:
    path.write_text(json.dumps(result.as_json(), indent=2) + "\n", encoding="utf-8")


def junit_xml(result: SuiteResult) -> str:
    """One testsuite, one testcase per figure: a failure for FAIL, a failure of type
    ``inconclusive`` for INCONCLUSIVE (not a pass), skipped for not measured."""
    counts = result.counts()
    suite = ET.Element(
        "testsuite",
        {
            "name": f"device_tests.{result.profile}",
            "tests": str(len(result.figures)),
            "failures": str(counts["fail"] + counts["inconclusive"]),
            "errors": "0",
            "skipped": str(counts["not_measured"]),
            "time": f"{result.duration_s:.3f}",
            "timestamp": result.started_at.isoformat(),
        },
    )
    props = ET.SubElement(suite, "properties")
    facts = {
        "device_class": result.device_class,
        "workload_version": result.workload_version,
        "target": result.target,
        **{k: json.dumps(v) for k, v in result.environment.as_json().items()},
    }
    for name, value in facts.items():
        ET.SubElement(props, "property", {"name": name, "value": str(value)})
    for f in result.figures:
        case = ET.SubElement(
            suite, "testcase", {"classname": f"device_tests.{result.profile}", "name": f.figure}
        )
        if f.status is Status.FAIL:
            ET.SubElement(case, "failure", {"type": "threshold", "message": f.verdict_line()})
        elif f.status is Status.INCONCLUSIVE:
            ET.SubElement(
                case,
                "failure",
                {
                    "type": "inconclusive",
                    "message": f.verdict_line() + " (the interval straddles the threshold)",
                },
            )
        elif f.status is Status.NOT_MEASURED:
            ET.SubElement(case, "skipped", {"message": f.note or "not measured"})
        ET.SubElement(case, "system-out").text = json.dumps(f.as_json())
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode")


def write_junit(result: SuiteResult, path: Path) -> None:
    path.write_text(junit_xml(result) + "\n", encoding="utf-8")
