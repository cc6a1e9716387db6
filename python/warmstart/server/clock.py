"""The clock ``warmstart serve`` runs its engine on: the engine's ``WallClock``.

Producers stamp samples with Unix time, and the engine rejects samples more than
``IngestConfig.max_skew_s`` (900 s) from its own clock, so a served engine reads the same time
base. Decisions' ``at`` is then Unix time too.
"""

from __future__ import annotations

from warmstart.engine.clock import WallClock

__all__ = ["WallClock"]
