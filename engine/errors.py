"""The one error hierarchy of petcohort.

Every error a user can meet carries a machine-readable ``reason`` code (upper
snake case, e.g. ``SUV_MISSING_WEIGHT``) and a human message. The root derives
from ``ValueError`` (as zarr-python's errors do) so callers that only know the
standard library still catch it.
"""
from __future__ import annotations

__all__ = [
    "PetCohortError",
    "InputError",
    "DicomError",
    "SuvError",
    "GridError",
    "StoreError",
    "ConfigError",
    "ClusterError",
    "StatsError",
    "SegmentationError",
    "StageError",
]


class PetCohortError(ValueError):
    """Root of all petcohort errors.

    Parameters
    ----------
    reason : str
        Machine-readable reason code (``[A-Z0-9_]+``), recorded in manifests.
    message : str
        What went wrong, naming the parameter or tag, the value received and
        what was expected.
    """

    def __init__(self, reason: str, message: str) -> None:
        if not reason or not reason.replace("_", "").isalnum() or reason.upper() != reason:
            raise TypeError(f"reason must be an UPPER_SNAKE code, got {reason!r}")
        self.reason = reason
        self.message = message
        super().__init__(f"[{reason}] {message}")

    def __reduce__(self):  # keep reason/message across pickling (Dask workers)
        return (type(self), (self.reason, self.message))


class InputError(PetCohortError):
    """A user-supplied value or file is invalid."""


class DicomError(InputError):
    """A DICOM series cannot be read or assembled (slices, series, pixels)."""


class SuvError(InputError):
    """SUV/SUL cannot be computed from the headers (missing or odd tags)."""


class GridError(InputError):
    """Arrays that must share a voxel grid do not."""


class StoreError(PetCohortError):
    """The cohort store is missing, locked, of another version, or corrupt."""


class ConfigError(InputError):
    """A configuration file or option is invalid (cluster.yaml, CLI options)."""


class ClusterError(PetCohortError):
    """A Dask cluster cannot be started or reached."""


class StatsError(InputError):
    """A statistic cannot be computed from the data given."""


class SegmentationError(PetCohortError):
    """A segmentation model or registration failed or is unusable."""


class StageError(PetCohortError):
    """A study-stage failed; its reason is recorded in the manifest."""
