"""The study-stage registry: what each stage needs, and how it is called.

A stage is a function ``fn(ctx: StageContext) -> StageOutput`` registered with
:func:`register_stage`. The runner (``pipelines/run.py``) builds one Dask task
per (study, stage), hashes inputs, times the call, records failures with their
reason code and commits outputs atomically through the store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np

from petcohort.pipelines.config import ParamKeys, RunConfig, normalize_key

if TYPE_CHECKING:
    from petcohort.storage.store import CohortStore

__all__ = ["StageContext", "StageOutput", "Stage", "register_stage", "STAGES", "stage_order", "load_stages",
           "MODEL_STAGES", "default_stages"]

AppliesTo = Literal["all", "baseline", "followup"]


@dataclass(frozen=True)
class StageContext:
    store: "CohortStore"
    key: str
    attrs: dict[str, Any]
    config: RunConfig
    baseline_key: str | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.attrs["spacing"])  # type: ignore[return-value]

    @property
    def is_baseline(self) -> bool:
        return int(self.attrs.get("timepoint", 0)) == 0


@dataclass
class StageOutput:
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[StageContext], StageOutput]
    requires: tuple[str, ...] = ()        # stages of the same study
    needs_baseline: tuple[str, ...] = ()  # stages of the patient's baseline study
    applies_to: AppliesTo = "all"
    params: tuple[str, ...] = ()          # dotted RunConfig keys read ("quantify.radius_mm"), recorded
    gpu: bool = False
    module: str = ""                      # module of the stage code (its fingerprint); "" = fn's module

    def applies(self, attrs: dict[str, Any]) -> bool:
        tp = int(attrs.get("timepoint", 0))
        return self.applies_to == "all" or (self.applies_to == "baseline") == (tp == 0)


STAGES: dict[str, Stage] = {}

# Canonical order; stages not yet registered are simply absent.
_ORDER = ("organs", "threshold", "register", "segment_bl", "segment_fu", "quantify", "evaluate", "qc",
          "track", "percist")
_MODULES = ("stage_organs", "stage_threshold", "stage_register", "stage_segment", "stage_quantify",
            "stage_evaluate", "stage_qc", "stage_track", "stage_percist")
#: Stages that need a trained model folder (``segment.<key>`` of RunConfig). They run only
#: when that folder is configured: phantom-trained demo networks must never
#: segment real data by default.
MODEL_STAGES = {"segment_bl": "model_bl", "segment_fu": "model_fu"}


def register_stage(name: str, *, requires: tuple[str, ...] = (), needs_baseline: tuple[str, ...] = (),
                   applies_to: AppliesTo = "all", params: tuple[str, ...] = (), gpu: bool = False):
    """Decorator registering ``fn`` as stage ``name``.

    ``params`` are the dotted configuration keys the stage reads
    (``"quantify.radius_mm"``, or a whole section ``"percist"``; the former
    flat names such as ``"radius_mm"`` are translated). Their resolved values
    are recorded in each study-stage record, and a change redoes the stage.
    An unknown key raises ``ConfigError`` ``CONFIG_UNKNOWN_FIELD`` at import.
    """
    if applies_to not in ("all", "baseline", "followup"):
        raise ValueError(f"applies_to must be all/baseline/followup, got {applies_to!r}")
    keys = ParamKeys(normalize_key(p) for p in params)

    def deco(fn: Callable[[StageContext], StageOutput]):
        STAGES[name] = Stage(name, fn, tuple(requires), tuple(needs_baseline), applies_to, keys, gpu,
                             module=fn.__module__)
        return fn

    return deco


def load_stages() -> dict[str, Stage]:
    """Import every stage module (registration happens at import)."""
    import importlib

    for mod in _MODULES:
        importlib.import_module(f"petcohort.pipelines.{mod}")
    return STAGES


def stage_order(names: list[str] | None = None) -> list[str]:
    """Registered stage names in canonical (dependency-respecting) order."""
    load_stages()
    known = [s for s in _ORDER if s in STAGES] + sorted(set(STAGES) - set(_ORDER))
    if names is None:
        return known
    unknown = set(names) - set(known)
    if unknown:
        from petcohort.engine.errors import ConfigError

        raise ConfigError("UNKNOWN_STAGE", f"unknown stage(s) {sorted(unknown)}; known: {known}")
    return [s for s in known if s in names]


def default_stages(config: RunConfig | dict[str, Any]) -> list[str]:
    """Every registered stage, less the model stages whose model folder is not configured.

    ``config``: the RunConfig, or a dict of the former ``extra`` form (``{"model_bl": ...}``).
    """
    extra = config.extra if isinstance(config, RunConfig) else config
    return [s for s in stage_order() if s not in MODEL_STAGES or extra.get(MODEL_STAGES[s])]
