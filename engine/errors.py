"""The one error hierarchy of petcohort.

Every error a user can meet carries a machine-readable ``reason`` code (upper
snake case, e.g. ``SUV_MISSING_WEIGHT``) and a human message. The codes and
their meanings are registered once in :mod:`petcohort.engine.reasons`; an
unregistered code is refused with ``TypeError`` (a programming error).

The root derives from ``ValueError`` (as zarr-python's errors do) so callers
that only know the standard library still catch it. A code of kind ``type``
(a value of the wrong type, e.g. ``BAD_TYPE``) makes the error an instance of
a ``TypeError`` subclass too (:class:`PetCohortTypeError`), as Python's own
convention asks: ``InputError("BAD_TYPE", ...)`` is caught by
``except InputError``, ``except PetCohortError`` and ``except TypeError``.
"""
from __future__ import annotations

from typing import Any

from petcohort.engine import reasons as _reasons

__all__ = [
    "PetCohortError",
    "PetCohortTypeError",
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
        Registered reason code (:data:`petcohort.engine.reasons.REASONS`),
        recorded in manifests.
    message : str
        What went wrong, naming the parameter or tag, the value received and
        what was expected.

    Raises
    ------
    TypeError
        When ``reason`` is not a registered code.
    """

    def __new__(cls, reason: str, message: str = "", *args: Any) -> PetCohortError:
        # A type-kind code picks the TypeError-derived twin of the class asked for, so the raise
        # site names its domain class and the registry decides the builtin base (PEP 3151 style).
        if _reasons.is_type_code(reason) and not issubclass(cls, TypeError):
            cls = _type_twin(cls)
        return super().__new__(cls, reason, message, *args)

    def __init__(self, reason: str, message: str) -> None:
        _reasons.require(reason)
        self.reason = reason
        self.message = message
        super().__init__(f"[{reason}] {message}")

    def __reduce__(self):  # keep reason/message across pickling (Dask workers)
        # the declared class, not a twin: unpickling re-derives the twin from the reason
        return (_declared(type(self)), (self.reason, self.message))


class PetCohortTypeError(PetCohortError, TypeError):
    """A petcohort error about a value of the wrong type (a ``TypeError`` too)."""


_TWINS: dict[type, type] = {PetCohortError: PetCohortTypeError}


def _type_twin(cls: type) -> type:
    """``cls`` combined with :class:`PetCohortTypeError` (made once per class)."""
    twin = _TWINS.get(cls)
    if twin is None:
        twin = type(cls.__name__.removesuffix("Error") + "TypeError", (cls, PetCohortTypeError),
                    {"__module__": cls.__module__, "__doc__": cls.__doc__, "_declared_class": cls})
        _TWINS[cls] = twin
    return twin


def _declared(cls: type) -> type:
    return cls.__dict__.get("_declared_class", cls)


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
