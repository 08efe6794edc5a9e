"""Trust decisions about updates: pure functions over bytes and values, ``now`` passed in.

Order of checks for an assignment (see docs/security-model.md):

1. the director's envelope signature, with the director keys named by the trusted TUF root
   (:class:`DirectorTrust`), at the root's threshold;
2. the assignment names this device;
3. its version is not lower than one already accepted (equal: nothing to do);
4. it has not expired;
5. every assigned target is signed by the image repository with the same hash, length,
   kind and format (:func:`check_targets_signed`).
"""

from edge_agent.trust.director import (
    AssignmentVerdict,
    DirectorTrust,
    open_director_document,
    verify_assignment,
)
from edge_agent.trust.targets import SignedTarget, check_targets_signed

__all__ = [
    "AssignmentVerdict",
    "DirectorTrust",
    "SignedTarget",
    "check_targets_signed",
    "open_director_document",
    "verify_assignment",
]
