"""A fleet simulator: many devices speaking the real device protocol over HTTP.

Devices have real Ed25519 keys, enroll with one-time enrollment tokens, sign every
request, verify the director's assignments with the agent's own trust code
(:mod:`edge_agent.trust`) against the TUF root, and report install states the way the
agent does, each with its own behaviour (healthy, fails health, silent, offline for a
while, enrolls late, slow to commit). Artifacts are not downloaded.

Two drivers share one sans-I/O core (:func:`simulator.exchange.device_round`):

- :class:`Fleet`, in process: one round per :meth:`Fleet.step`, over any synchronous
  client (a FastAPI ``TestClient``, or the faster :class:`AsgiClient` on the app) and the
  control plane's clock;
- :func:`run_load`, concurrent: asyncio tasks (and client processes) polling a real
  server at a rate, with latency percentiles; ``python -m simulator run`` on the CLI.

The simulator speaks only the wire protocol: it imports ``protocol`` and
``edge_agent.trust``, never ``control_plane``.
"""

from simulator.behaviour import (
    Always,
    Behaviour,
    BehaviourFunction,
    Health,
    Mix,
    Window,
    always,
    share,
)
from simulator.device import PendingInstall, PollOutcome, Serving, SimDevice
from simulator.errors import ServerError, SetupError, SimulatorError
from simulator.exchange import Answer, Call, RoundOutcome, device_round, director_from_root
from simulator.fleet import Fleet, StepResult
from simulator.load import LatencySummary, LoadPlan, LoadResult, run_load
from simulator.profiles import (
    HARDWARE_CLASSES,
    DeviceProfile,
    ProfileFunction,
    TagSpec,
    hardware_for,
    uniform,
)
from simulator.transport import AsgiClient, AsyncHttpClient, HttpClient

__all__ = [
    "HARDWARE_CLASSES",
    "Always",
    "Answer",
    "AsgiClient",
    "AsyncHttpClient",
    "Behaviour",
    "BehaviourFunction",
    "Call",
    "DeviceProfile",
    "Fleet",
    "Health",
    "HttpClient",
    "LatencySummary",
    "LoadPlan",
    "LoadResult",
    "Mix",
    "PendingInstall",
    "PollOutcome",
    "ProfileFunction",
    "RoundOutcome",
    "ServerError",
    "Serving",
    "SetupError",
    "SimDevice",
    "SimulatorError",
    "StepResult",
    "TagSpec",
    "Window",
    "always",
    "device_round",
    "director_from_root",
    "hardware_for",
    "run_load",
    "share",
    "uniform",
]
