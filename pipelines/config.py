"""Run configuration: parsed once, frozen, passed down (never read deep inside code)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from petcohort.engine.errors import ConfigError

__all__ = ["RunConfig", "config_hash"]


@dataclass(frozen=True)
class RunConfig:
    """Parameters of the analysis stages (METHODS.md defaults).

    Each stage declares which of these fields it reads; only those enter its
    config hash, so changing the PERCIST sphere does not redo labelling.
    """

    connectivity: int = 26
    radius_mm: float = 6.2035
    overlap: float = 0.5
    suv_clip: float = 5.0
    threshold_fixed: float = 2.5
    threshold_relative: float = 0.41
    percist_sphere_mm: float = 30.0
    lbm: str = "janmahasatian"
    sources: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.connectivity not in (6, 18, 26):
            raise ConfigError("CONFIG_BAD_CONNECTIVITY",
                              f"connectivity must be 6, 18 or 26, got {self.connectivity!r}")
        for name in ("radius_mm", "percist_sphere_mm", "suv_clip", "threshold_fixed"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError("CONFIG_BAD_VALUE", f"{name} must be a positive number, got {value!r}")
        for name in ("overlap", "threshold_relative"):
            value = getattr(self, name)
            if not (0 < value <= 1):
                raise ConfigError("CONFIG_BAD_VALUE", f"{name} must be in (0, 1], got {value!r}")
        if self.lbm not in ("janmahasatian", "james"):
            raise ConfigError("CONFIG_BAD_VALUE", f"lbm must be 'janmahasatian' or 'james', got {self.lbm!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sources"] = list(self.sources) if self.sources is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError("CONFIG_UNKNOWN_FIELD", f"unknown run option(s): {sorted(unknown)}")
        d = dict(d)
        if d.get("sources") is not None:
            d["sources"] = tuple(d["sources"])
        return cls(**d)


def config_hash(config: RunConfig, params: tuple[str, ...]) -> str:
    """SHA-256 (16 hex) of the config fields named in ``params``."""
    full = config.to_dict()
    chosen = {p: full[p] for p in sorted(params)}
    blob = json.dumps(chosen, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
