"""A property-based fuzz of an OpenAPI schema: schemathesis makes the requests, a real app
on loopback answers them, and each answer must be no 5xx and match the schema.

Every operation is fuzzed twice: with inputs that fit the schema (positive; they get past
validation into the services) and with inputs that do not (negative; they must be refused
with a 4xx, never a 5xx). A failing operation does not stop the others: the fuzz collects
one shrunk example per operation and mode, and the test fails with all of them listed.

A known failure that someone is fixing is not hidden: it is a :class:`KnownIssue` that
names its owner, matches only the inputs that trigger it, and has its own strict-xfail
test; the fuzz treats only those inputs differently, so the rest is still fuzzed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

# No 5xx; a body (and content type) that matches the response the schema documents for
# that status. Undocumented statuses (401, 404, 409 ...) are not failures by themselves:
# FastAPI documents only 2xx and 422 unless a route says more.
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@dataclass(frozen=True)
class KnownIssue:
    """A failure the fuzz found that is reported and being fixed elsewhere.

    Only the inputs it ``matches`` are treated differently: with ``excused`` checks they
    are still sent and checked by every other check (a schema that misdocuments a content
    type still gets the no-5xx check); without, they are left out (a 5xx would hide
    everything else the operation could show). Each has a strict-xfail test of its own.
    """

    issue: str  # who owns it, e.g. "issue 8, engineer B: edge_agent/api"
    what: str  # what happens, in a sentence
    matches: Callable[[str, Any], bool]  # (operation label, case) -> is this the input?
    excused: tuple[Any, ...] = ()  # checks not applied to those inputs; () = not sent


@dataclass
class Finding:
    operation: str
    mode: str
    error: str


@dataclass
class FuzzReport:
    findings: list[Finding] = field(default_factory=list)
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    operations: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # known issue -> inputs it took
    nothing_to_negate: list[str] = field(default_factory=list)
    per_operation: dict[str, dict[int, int]] = field(default_factory=dict)  # label -> statuses
    seconds: float = 0.0

    def unreached(self) -> list[str]:
        """Operations that no generated request reached (a fuzz that fuzzes nothing)."""
        return [label for label, statuses in self.per_operation.items() if not statuses]

    def table(self) -> str:
        return "\n".join(
            f"  {label}: " + ", ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))
            for label, statuses in self.per_operation.items()
        )

    def summary(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{self.operations} operations, {self.requests} requests in {self.seconds:.0f} s"
            f" ({statuses}); inputs under known issues: {self.left_out or 'none'};"
            f" {len(self.nothing_to_negate)} operation(s) with no invalid input to send"
        )

    def failure_message(self) -> str:
        parts = [f"{len(self.findings)} fuzz finding(s); {self.summary()}"]
        for f in self.findings:
            parts.append(f"--- {f.operation} ({f.mode})\n{f.error[:4000]}")
        return "\n".join(parts)


# Prepares one generated case before it is sent: fills in credentials (a bearer token, a
# device signature) and, where the schema alone cannot reach a service, a real identifier.
# Arguments: the case, a hypothesis draw function; returns the requests auth to use.
Prepare = Callable[[Any, Callable[[st.SearchStrategy[Any]], Any]], requests.auth.AuthBase | None]


def load_schema(spec: Mapping[str, Any], base_url: str) -> Any:
    schema = schemathesis.openapi.from_dict(dict(spec))
    schema.config.update(base_url=base_url)
    return schema


def document_body(
    spec: dict[str, Any], method: str, path: str, media_type: str, schema: dict[str, Any]
) -> None:
    """Give an operation that reads its body raw a ``requestBody`` in this copy of the spec,
    so the fuzz sends such bodies (FastAPI documents only bodies it parses itself)."""
    spec["paths"][path][method]["requestBody"] = {
        "required": True,
        "content": {media_type: {"schema": schema}},
    }


def model_schema(spec: dict[str, Any], model: Any) -> dict[str, Any]:
    """A pydantic model's JSON schema, its definitions moved into the spec's components."""
    schema: dict[str, Any] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    return schema


def fuzz(
    schema: Any,
    *,
    base_url: str,
    prepare: Prepare,
    examples: int,
    known: Iterable[KnownIssue] = (),
    timeout: float = 60,
    fuzz_seed: int = 0,
) -> FuzzReport:
    """Fuzz every operation of ``schema`` in both modes; never raises for a finding."""
    report = FuzzReport()
    known = tuple(known)
    started = time.monotonic()
    session = requests.Session()
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the schema itself is broken here: a finding too
            report.findings.append(Finding("(schema)", "-", _describe(result.err())))
            continue
        operation = result.ok()
        label = operation.label
        report.operations += 1
        report.per_operation[label] = {}
        for mode in MODES:
            run = _one_operation(
                operation, mode, report, session, base_url, prepare, known, timeout
            )
            run = settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=(Phase.explicit, Phase.generate, Phase.shrink),
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )(seed(fuzz_seed)(run))
            try:
                run()
            except Unsatisfiable:
                # nothing here can be made invalid (no body, plain string path parameters)
                report.nothing_to_negate.append(f"{label} ({mode.value})")
            except (Exception, BaseExceptionGroup) as e:  # a finding: record it, go on
                report.findings.append(Finding(label, mode.value, _describe(e)))
    session.close()
    report.seconds = time.monotonic() - started
    return report


def _one_operation(
    operation: Any,
    mode: GenerationMode,
    report: FuzzReport,
    session: requests.Session,
    base_url: str,
    prepare: Prepare,
    known: tuple[KnownIssue, ...],
    timeout: float,
) -> Callable[[], None]:
    """A hypothesis test: one generated request to ``operation``, its answer checked."""
    label = operation.label

    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def one_request(case: Any, data: st.DataObject) -> None:
        auth = prepare(case, data.draw)
        checks = list(CHECKS)
        for issue in known:
            if issue.matches(label, case):
                report.left_out[issue.issue] = report.left_out.get(issue.issue, 0) + 1
                if not issue.excused:
                    return
                checks = [c for c in checks if c not in issue.excused]
        response = case.call(base_url=base_url, session=session, auth=auth, timeout=timeout)
        report.requests += 1
        for counts in (report.statuses, report.per_operation[label]):
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks)

    return one_request


def _describe(error: BaseException) -> str:
    notes = "\n".join(getattr(error, "__notes__", []))
    return f"{type(error).__name__}: {error}\n{notes}".strip()


def json_body(case: Any) -> dict[str, Any] | None:
    """The case's body when it is a JSON object (the fuzz may make it anything)."""
    body = case.body
    return body if isinstance(body, dict) else None
