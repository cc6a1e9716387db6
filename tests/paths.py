"""Where the tests find real inputs; importable without warmstart installed."""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
# Real public inputs live outside the repository (some are licensed for testing only).
SHARED_DATA = Path(os.environ.get("WARMSTART_SHARED_DATA", REPOSITORY.parent / "shared" / "data"))
IN_CI = os.environ.get("CI") == "true"
