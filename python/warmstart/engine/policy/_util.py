"""Small numeric helpers shared by policies."""

from __future__ import annotations

import math

# Float error can push an exact quotient such as 0.3 / 0.1 just above an integer; ceil must not
# add an instance for it.
EPSILON = 1e-9


def ceil_count(x: float) -> int:
    """Return ``ceil(x)`` for an instance count, ignoring float error below 1e-9."""
    return max(0, math.ceil(x - EPSILON))
