"""The value checks and the section base of :mod:`petcohort.pipelines.config`.

Each check takes the dotted key (``quantify.radius_mm``) and a value, and
returns the normalised value or raises one :class:`ConfigError` naming the key
and what is expected. :func:`_spec` declares a section field with its check,
its documentation and where its default lives (a kernel's constant or keyword
default, read lazily by :func:`_kernel_default`).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
from dataclasses import field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from petcohort.engine.errors import ConfigError

Check = Callable[[str, Any], Any]

#: the nnU-Net model module (owner of the channel roles a channel map may name).
_MODEL = "petcohort.engine.segment.nnunet_model"


# -- defaults: read from the kernels that own them --------------------------------------------
@lru_cache(maxsize=None)
def _kernel_default(module: str, name: str, param: str | None = None) -> Any:
    """``module.name`` (a constant), or the default of keyword ``param`` of function ``module.name``."""
    obj = getattr(importlib.import_module(module), name)
    if param is None:
        return obj
    return inspect.signature(obj).parameters[param].default


# -- value checks (each returns the normalised value or raises ConfigError naming the key) -----
def _bad(where: str, expected: str, value: Any, reason: str = "BAD_VALUE") -> ConfigError:
    return ConfigError(reason, f"{where} must be {expected}, got {value!r}")


def _real(where: str, value: Any, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(where, expected, value, "BAD_TYPE")
    if not math.isfinite(value):
        raise _bad(where, expected, value)
    return float(value)


def _positive(where: str, value: Any) -> float:
    v = _real(where, value, "a number > 0")
    if v <= 0:
        raise _bad(where, "a number > 0", value)
    return v


def _non_negative(where: str, value: Any) -> float:
    v = _real(where, value, "a number >= 0")
    if v < 0:
        raise _bad(where, "a number >= 0", value)
    return v


def _fraction(where: str, value: Any) -> float:
    v = _real(where, value, "a number in (0, 1]")
    if not 0 < v <= 1:
        raise _bad(where, "a number in (0, 1]", value)
    return v


def _boolean(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, "true or false", value, "BAD_TYPE")
    return value


def _seed(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(where, "an integer >= 0", value)
    return int(value)


def _connectivity(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in (6, 18, 26):
        raise _bad(where, "6, 18 or 26 (an integer)", value)
    return int(value)


def _choice(*options: str) -> Check:
    def check(where: str, value: Any) -> str:
        if value not in options:
            raise _bad(where, "one of " + ", ".join(options), value)
        return str(value)

    return check


def _folds(where: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value or \
            any(isinstance(f, bool) or not isinstance(f, int) or f < 0 for f in value):
        raise _bad(where, "null or a non-empty list of integers >= 0", value)
    return tuple(int(f) for f in value)


def _path(kind: str) -> Check:
    def check(where: str, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, (str, Path)) or not str(value):
            raise _bad(where, f"null or the path of an existing {kind}", value)
        p = Path(value).expanduser()
        if not (p.is_dir() if kind == "folder" else p.is_file()):
            # the key names the problem; the path itself is the user's own option
            raise ConfigError("BAD_VALUE", f"{where}: {kind} {str(value)!r} does not exist")
        return str(p.resolve())

    check.path_kind = kind  # type: ignore[attr-defined] - read by path_identity
    return check


def path_identity(check: Check, value: Any) -> Any:
    """What a record keeps of a path-valued setting: never the path itself.

    A folder (an nnU-Net model, ``.../<Dataset>/<Trainer>__<Plans>__<config>``) is
    named by its last two components (its files are hashed in the stage's code
    fingerprint); a file (``fold_map``) by its name and the SHA-256 of its
    content. So records do not depend on where a store's models sit (a store
    moved from a laptop to a cluster is not redone) and hold no user folder
    name. Values of other settings are returned unchanged.
    """
    kind = getattr(check, "path_kind", None)
    if value is None or kind is None:
        return value
    path = Path(value)
    if kind == "folder":
        return "/".join(path.parts[-2:])
    from petcohort.pipelines.fingerprint import file_sha256  # noqa: PLC0415 - the one file hash (cached)

    return f"{path.name} sha256:{file_sha256(path)[:16]}"


def _channel_map(where: str, value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    roles = _kernel_default(_MODEL, "ROLES")
    if not isinstance(value, Mapping) or any(not isinstance(k, str) or not k.strip() or v not in roles
                                             for k, v in value.items()):
        raise _bad(where, "null or a mapping {model channel name: " + " | ".join(roles) + "}", value)
    return {str(k): str(v) for k, v in value.items()}


def _label_name(where: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise _bad(where, "null or the name of a label in the model's dataset.json labels", value)
    return value


def _pair_check(where: str, value: Any) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _bad(where, "a list of two numbers >= 0 [relative, SUL]", value)
    return (_non_negative(where, value[0]), _non_negative(where, value[1]))


_SOURCE = re.compile(r"[A-Za-z0-9_]+")


def _sources(where: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
            any(not isinstance(s, str) or not _SOURCE.fullmatch(s) for s in value):
        raise _bad(where, "null or a list of source names (seg/<name>: letters, digits, _)", value)
    return tuple(value)


def _spec(check: Check, doc: str, *, default: Any = dataclasses.MISSING, owner: tuple | None = None) -> Any:
    meta = {"check": check, "doc": doc}
    if owner is not None:
        module, name, *param = owner
        return field(default_factory=lambda: _kernel_default(module, name, *param), metadata=meta)
    return field(default=default, metadata=meta)


class _Section:
    """Base of the sections: checks and normalises every field after ``__init__``."""

    NAME: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = f.metadata["check"](f"{self.NAME}.{f.name}", getattr(self, f.name))
            object.__setattr__(self, f.name, value)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
