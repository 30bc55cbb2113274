"""A study's lesions for one segmentation source: the one place stages get lesion labels from.

``seg/<source>`` is the binary lesion mask; ``seg/<source>_instances``
(uint16, when the mask came with instances: DICOM SEG segments, RTSTRUCT
ROIs, NIfTI label maps) holds the instance ids, and the study attrs
``masks[<source>]["segments"]`` say which segment number and label each id
came from. Lesions follow :func:`petcohort.engine.kernels.label.lesion_labels`,
so quantify, evaluate, track, PERCIST and DICOM export agree on lesion ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from petcohort.engine.kernels.label import lesion_labels

__all__ = ["INSTANCES_SUFFIX", "LesionLabels", "instances_of", "segment_table", "study_lesion_labels",
           "is_instances_array"]

INSTANCES_SUFFIX = "_instances"


def is_instances_array(name: str) -> bool:
    """True for ``seg/<source>_instances`` (an instance map, not a segmentation source of its own)."""
    return name.startswith("seg/") and name.endswith(INSTANCES_SUFFIX)


def instances_of(store, key: str, source: str) -> np.ndarray | None:
    """``seg/<source>_instances`` of the study, or None when the source has no instance map."""
    name = f"seg/{source}{INSTANCES_SUFFIX}"
    return store.read_array(key, name) if store.has_array(key, name) else None


def segment_table(attrs: dict[str, Any], source: str) -> dict[int, dict[str, Any]]:
    """Instance id -> ``{"number", "label"}`` of the segment/ROI it came from (empty when unknown)."""
    entry = ((attrs.get("masks") or {}).get(source) or {})
    return {int(s["id"]): {"number": s.get("number"), "label": s.get("label")} for s in entry.get("segments", [])}


@dataclass(frozen=True)
class LesionLabels:
    """Lesion labels of one study and source.

    ``segment[i - 1]`` is ``{"id", "number", "label"}`` of the segment lesion
    ``i`` came from, or None when the mask has no instances.
    """

    labels: np.ndarray
    n: int
    segment: tuple[dict[str, Any] | None, ...]


def study_lesion_labels(store, key: str, source: str, *, connectivity: int) -> LesionLabels:
    """The lesions of ``seg/<source>`` of study ``key`` (instance-aware)."""
    mask = store.read_array(key, f"seg/{source}")
    instances = instances_of(store, key, source)
    labels, n, parents = lesion_labels(mask, instances, connectivity=connectivity)
    if parents is None:
        return LesionLabels(labels, n, (None,) * n)
    table = segment_table(store.study_attrs(key), source)
    return LesionLabels(labels, n, tuple({"id": int(p), **table.get(int(p), {"number": None, "label": None})}
                                         for p in parents))
