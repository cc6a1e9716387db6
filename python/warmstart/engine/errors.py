"""Exceptions raised by the scaling engine.

Each class also inherits the standard library category that fits, so callers can catch either::

    EngineError
    ├── EngineConfigError (ValueError)      invalid endpoint, metric, policy or behavior setting
    ├── UnknownEndpointError (LookupError)  an endpoint or metric name that no spec declares
    ├── TooManySeriesError (RuntimeError)   an endpoint reached its limit of series
    └── EngineClosedError (RuntimeError)    the engine was used after stop()

Bad samples never raise: the engine rejects them with a counted reason (see ``RejectReason``).
"""

from __future__ import annotations

from warmstart.errors import WarmstartError


class EngineError(WarmstartError):
    """Base class of every exception the engine raises."""


class EngineConfigError(EngineError, ValueError):
    """An endpoint, metric, policy or behavior setting is invalid."""


class UnknownEndpointError(EngineError, LookupError):
    """An endpoint or metric name is not declared by any endpoint spec."""


class TooManySeriesError(EngineError, RuntimeError):
    """An endpoint has ``IngestConfig.max_series_per_endpoint`` series and needs another."""


class EngineClosedError(EngineError, RuntimeError):
    """The engine was used after it was stopped."""
