"""warmstart: autoscaling for ML inference fleets with fast, verified image pulls."""

from warmstart import errors
from warmstart._native import (
    BlobInfo,
    BlobReport,
    Descriptor,
    GcReport,
    ImportReport,
    Problem,
    PullProgress,
    PullReport,
    Usage,
    VerifyReport,
)
from warmstart._native import __version__ as __version__
from warmstart.store import LayerStore

__all__ = [
    "BlobInfo",
    "BlobReport",
    "Descriptor",
    "GcReport",
    "ImportReport",
    "LayerStore",
    "Problem",
    "PullProgress",
    "PullReport",
    "Usage",
    "VerifyReport",
    "errors",
]
