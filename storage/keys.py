"""Pseudonymous keys: validation, keyed-HMAC pseudonyms, study keys.

Raw patient identifiers (PatientID, StudyInstanceUID, file names) must never
reach store paths, Dask task keys, logs or reports. Everything that becomes a
path component goes through :func:`validate_key` first, *before* any
filesystem access, so a key such as ``../../etc`` cannot escape the store.

The pseudonym key (the HMAC secret of :func:`pseudonym`) and its fingerprint:
:mod:`petcohort.storage.key_file`.
"""
from __future__ import annotations

import hashlib
import hmac
import re

from petcohort.engine.errors import StoreError
from petcohort.storage.key_file import MIN_SECRET_LEN

__all__ = ["validate_key", "validate_name", "pseudonym", "study_key", "split_study_key", "MAX_KEY_LEN"]

MAX_KEY_LEN = 64
_ALLOWED = re.compile(r"[A-Za-z0-9._-]+")
_STUDY_KEY = re.compile(r"(?P<patient>.+)-T(?P<timepoint>[0-9]+)")


def validate_key(key: object, *, what: str = "key") -> str:
    """Check that ``key`` is a safe single path component and return it.

    Allowed: 1-64 characters from ``[A-Za-z0-9._-]``, not starting with a dot
    (which also excludes ``.`` and ``..``), not ``zarr.json``. Rejects ``/``, ``\\``, NUL and
    everything else; runs before any filesystem access.

    Raises
    ------
    StoreError
        ``BAD_KEY``, naming ``what`` and the offending value.
    """
    if not isinstance(key, str):
        raise StoreError("BAD_TYPE", f"{what} must be a str, got {type(key).__name__}")
    problem = None
    if not key:
        problem = "is empty"
    elif len(key) > MAX_KEY_LEN:
        problem = f"has {len(key)} characters (max {MAX_KEY_LEN})"
    elif not _ALLOWED.fullmatch(key):
        problem = "contains characters outside [A-Za-z0-9._-]"
    elif key.startswith("."):
        problem = "starts with a dot"
    elif key == "zarr.json":
        problem = "is reserved (the Zarr metadata document of every group)"
    if problem is not None:
        # repr() keeps NUL and control characters visible and harmless in logs.
        shown = repr(key[:80])
        raise StoreError("BAD_KEY", f"{what} {shown} {problem}; expected 1-{MAX_KEY_LEN} characters "
                                    "from [A-Za-z0-9._-], not starting with '.'")
    return key


def validate_name(name: object, *, what: str = "array name") -> str:
    """Validate a ``/``-separated array name (``pet``, ``seg/manual``); each part is a key."""
    if not isinstance(name, str) or not name:
        raise StoreError("BAD_KEY", f"{what} must be a non-empty str, got {name!r}")
    for part in name.split("/"):
        validate_key(part, what=f"{what} part of {name[:80]!r}")
    return name


def pseudonym(identifier: str, secret: bytes, prefix: str = "P") -> str:
    """Keyed pseudonym ``<prefix>-<10 hex>`` of a raw identifier.

    HMAC-SHA256 (RFC 2104) of the UTF-8 identifier under ``secret``, truncated
    to 40 bits (10 hex digits): ~1e12 values, collision-free in practice for
    cohorts of thousands, and not invertible without the secret.

    Parameters
    ----------
    identifier : str
        Raw identifier (e.g. DICOM PatientID); never logged.
    secret : bytes
        Pseudonymisation secret (>= 16 bytes).
    prefix : str
        Key prefix, itself a valid key (``P`` for patients).

    Examples
    --------
    >>> pseudonym("12345", b"0" * 32)  # doctest: +SKIP
    'P-3fa81c02d9'
    """
    if not isinstance(identifier, str) or not identifier:
        raise StoreError("BAD_IDENTIFIER", "identifier must be a non-empty str")
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_SECRET_LEN:
        raise StoreError("BAD_SECRET", f"secret must be >= {MIN_SECRET_LEN} bytes")
    validate_key(prefix, what="pseudonym prefix")
    digest = hmac.new(bytes(secret), identifier.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:10]}"


def study_key(patient_key: str, timepoint: int) -> str:
    """Study key ``<patient key>-T<timepoint>`` (``P-3fa81c02d9-T0``), validated."""
    validate_key(patient_key, what="patient key")
    if isinstance(timepoint, bool) or not isinstance(timepoint, int) or timepoint < 0:
        raise StoreError("BAD_KEY", f"timepoint must be an int >= 0, got {timepoint!r}")
    return validate_key(f"{patient_key}-T{timepoint}", what="study key")


def split_study_key(key: str) -> tuple[str | None, int | None]:
    """Inverse of :func:`study_key`: ``(patient key, timepoint)``, or ``(None, None)``."""
    m = _STUDY_KEY.fullmatch(key)
    if m is None:
        return None, None
    return m.group("patient"), int(m.group("timepoint"))
