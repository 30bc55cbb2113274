"""Array encoding (chunks, codec) and the atomic study-stage commit protocol.

Store layout (relative to the store root)::

    zarr.json                               root group: petcohort_format, kind,
                                            pseudonym_key_fingerprint
    pseudonym.key                           legacy stores only: the embedded key
                                            (moved out by `petcohort key export`)
    lock.json                               writer lock (storage/lock.py)
    studies/<key>/zarr.json                 study group; attrs = study attrs
    studies/<key>/<name>/...                arrays: pet, ct, seg/manual, ...
    _records/<key>/<stage>.json             stage records (the commit points)
    _staging/<key>/<stage>-<token>/<name>   arrays of a commit in flight
    cohort/<name>.json                      cohort-level JSON (write_json)

Stage records live outside the study groups, under one ``_records/`` prefix,
so that :meth:`CohortStore.stage_records` is one small listing instead of a
walk over every chunk of every study.

Commit protocol (:func:`commit`) -- the record is the commit point:

1. write the arrays to ``_staging/<key>/<stage>-<token>/``;
2. delete the previous record of (key, stage): from here on the manifest
   says "not committed";
3. delete the previous stage arrays and move the staged ones into place
   (local: one ``os.rename`` per array directory; object stores: copy, then
   delete the staging keys);
4. write the new record last (local: temp file + ``os.replace``; object
   stores: one PUT).

A process killed at any step leaves either the old record with its arrays
(before step 2) or no record (after step 2, before step 4 completes), never a
record pointing at partial arrays. Leftover staging is removed by
``CohortStore.cleanup_staging``.
"""
from __future__ import annotations

import json
import math
import secrets
from typing import Any, Callable

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from petcohort.engine.errors import StoreError
from petcohort.storage._backends import Backend, zarr_group
from petcohort.storage.keys import validate_name

__all__ = ["CHUNK_BYTES", "chunks_for", "compressor", "write_array", "read_array", "commit",
           "record_key", "staging_prefix", "study_prefix", "ALLOWED_DTYPES", "fail",
           "check_array", "check_slot", "ensure_groups"]

CHUNK_BYTES = 1 << 20  # >= 1 MiB per chunk (docs/contracts.md: "Chunks >= 1 MB")

# Numeric dtypes with an exact zarr v3 round trip.
ALLOWED_DTYPES = frozenset(np.dtype(t) for t in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float32", "float64"))

RECORDS = "_records"
STAGING = "_staging"
STUDIES = "studies"


def study_prefix(key: str) -> str:
    return f"{STUDIES}/{key}"


def record_key(key: str, stage: str) -> str:
    return f"{RECORDS}/{key}/{stage}.json"


def staging_prefix(key: str, stage: str, token: str) -> str:
    return f"{STAGING}/{key}/{stage}-{token}"


#: Blosc codec of floating-point arrays (PET, SUV, registered PET) and of every other array.
FLOAT_CODEC = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}
OTHER_CODEC = {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"}


def compressor(dtype: Any = np.uint8) -> BloscCodec:
    """The codec of an array of ``dtype``: Blosc + byte shuffle, lz4 for floats, zstd-3 otherwise.

    Chosen by ``python benchmarks/bench_store.py`` (per-array codec table; JSON
    in benchmarks/results/store_codecs.json) on a whole-body-like study of
    250x144x144 voxels (PET float32 with ~20 % multiplicative noise, CT int16,
    lesion mask uint8), z-slab chunks, and on the demo cohort's PETs.

    * Integer arrays (CT, masks, labels): Blosc-zstd3+shuffle is the smallest
      (CT 2.85x, mask ~2000x) with a read as fast as any compressed candidate.
    * Floating-point arrays: every stage reads the PET (registration and PERCIST
      read two), so its decode time is paid 5-8 times per study, and the
      registered baseline PET is written once per follow-up. Blosc-lz4+shuffle
      decodes a demo PET (355x88x164, 20 MiB) in 25 ms against 61 ms for
      zstd-3 and encodes it in 79 ms against 227 ms, for 11 % more bytes
      (6.9 vs 6.2 MiB). On the benchmark's noisy PET: 16.7 vs 16.1 MiB, read
      15 vs 22 ms, write 45 vs 80 ms (noisy float32 barely compresses whatever
      the codec: its low mantissa bits are noise).

    Byte shuffle groups the high bytes of neighbouring voxels, which is what
    makes CT/PET compressible (Blosc docs, "shuffle filter"). The codec is
    stored in each array's metadata, so arrays written with another codec stay
    readable.
    """
    return BloscCodec(**(FLOAT_CODEC if np.dtype(dtype).kind == "f" else OTHER_CODEC))


def chunks_for(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Z-slab chunks: whole trailing planes, as many leading slices as reach 1 MiB.

    Parameters
    ----------
    shape : tuple of int
        Array shape, ``(Z, Y, X)`` for volumes.
    itemsize : int
        Bytes per element.

    Returns
    -------
    tuple of int
        Chunk shape; an array smaller than 1 MiB is one chunk. Every chunk
        dimension is >= 1 (zarr requires it, also for empty arrays).
    """
    if len(shape) == 0:
        return ()
    plane = itemsize * math.prod(max(1, s) for s in shape[1:])
    per_chunk = max(1, math.ceil(CHUNK_BYTES / plane))
    return (max(1, min(shape[0], per_chunk)),) + tuple(max(1, s) for s in shape[1:])


def check_array(name: str, value: Any) -> np.ndarray:
    """Validate an array to be written; returns it as a numpy array."""
    validate_name(name)
    if not isinstance(value, np.ndarray):
        raise StoreError("BAD_ARRAY", f"array {name!r} must be a numpy ndarray, got {type(value).__name__}")
    if value.dtype not in ALLOWED_DTYPES:
        raise StoreError("BAD_ARRAY", f"array {name!r} has dtype {value.dtype}; expected one of "
                                      + ", ".join(sorted(str(d) for d in ALLOWED_DTYPES)))
    return value


def _node_type(backend: Backend, path: str) -> str | None:
    raw = backend.get(f"{path}/zarr.json")
    if raw is None:
        return None
    try:
        return json.loads(raw).get("node_type")
    except (ValueError, AttributeError):
        return None


def check_slot(backend: Backend, base: str, name: str) -> None:
    """Refuse array names that clash with the hierarchy: ``seg`` while ``seg/manual`` exists, or
    ``pet/x`` while ``pet`` is an array (zarr would silently delete the other node)."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        if _node_type(backend, f"{base}/{'/'.join(parts[:i])}") == "array":
            raise StoreError("ARRAY_NAME_CONFLICT", f"array name {name!r} is inside existing array "
                                                    f"{'/'.join(parts[:i])!r}")
    if _node_type(backend, f"{base}/{name}") == "group":
        raise StoreError("ARRAY_NAME_CONFLICT", f"array name {name!r} is an existing group of arrays; "
                                                "choose another name")


def ensure_groups(backend: Backend, base: str, name: str) -> None:
    """Create the zarr groups between ``base`` and array ``name`` (``seg`` for ``seg/manual``)."""
    parts = name.split("/")[:-1]
    for i in range(len(parts)):
        path = f"{base}/{'/'.join(parts[: i + 1])}"
        if backend.get(f"{path}/zarr.json") is None:
            zarr_group(backend, path, mode="a")


def write_array(backend: Backend, path: str, value: np.ndarray) -> None:
    """Write ``value`` as a zarr v3 array at ``path`` (replacing one already there)."""
    arr = zarr.create_array(store=backend.zstore, name=path, shape=value.shape, dtype=value.dtype,
                            chunks=chunks_for(value.shape, value.dtype.itemsize),
                            compressors=[compressor(value.dtype)], fill_value=0, overwrite=True,
                            zarr_format=3)
    if value.size:
        arr[...] = value


def read_array(backend: Backend, path: str) -> np.ndarray:
    """Read the whole array at ``path`` as numpy (dtype and shape as written)."""
    arr = zarr.open_array(store=backend.zstore, path=path, mode="r", zarr_format=3)
    return np.asarray(arr[...])


def _names_in(record_bytes: bytes | None) -> list[str]:
    """Array names listed by a stored record; invalid names (a corrupt record) are skipped."""
    if record_bytes is None:
        return []
    try:
        names = json.loads(record_bytes).get("arrays", [])
    except (ValueError, AttributeError):
        return []
    out = []
    for name in names if isinstance(names, list) else []:
        try:
            out.append(validate_name(name))
        except StoreError:
            continue
    return out


def _remove_arrays(backend: Backend, key: str, names: list[str]) -> None:
    for name in names:
        backend.delete_prefix(f"{study_prefix(key)}/{name}/")


def commit(backend: Backend, key: str, stage: str, arrays: dict[str, np.ndarray], record: dict,
           *, hook: Callable[[str], None] | None = None) -> None:
    """Atomically replace the outputs of (key, stage); see the module docstring.

    Parameters
    ----------
    backend : Backend
        Writable store backend.
    key, stage : str
        Validated study key and stage name.
    arrays : dict of str to ndarray
        Outputs of the stage (validated with :func:`check_array`).
    record : dict
        Complete stage record (JSON-serialisable), written last.
    hook : callable, optional
        Called with the step name (``staged``, ``unrecorded``, ``moved``)
        after each step; tests use it to kill the process in between.
    """
    data = json.dumps(record, sort_keys=True).encode("utf-8")
    token = secrets.token_hex(6)
    staging = staging_prefix(key, stage, token)
    for name, value in arrays.items():
        write_array(backend, f"{staging}/{name}", value)
    if hook:
        hook("staged")

    old = backend.get(record_key(key, stage))
    backend.delete(record_key(key, stage))
    if hook:
        hook("unrecorded")

    old_names = _names_in(old)
    # Old outputs of this stage go too, also those the new run does not write,
    # so no array outlives the record that vouched for it.
    _remove_arrays(backend, key, sorted(set(old_names) | set(arrays)))
    base = study_prefix(key)
    for name in arrays:
        ensure_groups(backend, base, name)
        backend.move_prefix(f"{staging}/{name}/", f"{base}/{name}/")
    backend.delete_prefix(f"{staging}/")
    if hook:
        hook("moved")

    backend.put(record_key(key, stage), data)


def fail(backend: Backend, key: str, stage: str, record: dict) -> None:
    """Replace the record of (key, stage) by a failed one and drop its old arrays."""
    data = json.dumps(record, sort_keys=True).encode("utf-8")
    old = backend.get(record_key(key, stage))
    backend.delete(record_key(key, stage))
    _remove_arrays(backend, key, _names_in(old))
    backend.put(record_key(key, stage), data)
