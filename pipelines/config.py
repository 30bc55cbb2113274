"""Run configuration: one frozen, typed section per stage or method, parsed once at the CLI.

``run.yaml`` (every key optional; ``petcohort config show`` prints the resolved values)::

    quantify:     {radius_mm: 6.2035, connectivity: 26}
    evaluate:     {overlap: 0.5}
    threshold:    {fixed: 2.5, relative: 0.41}
    percist:      {sphere_mm: 30.0, pct_change: 30.0, abs_change: 0.8, tlg_increase_pct: 75.0, ...}
    suv:          {clip: 5.0, lbm: janmahasatian, always_backcompute: false}
    segment:      {model_bl: null, model_fu: null, folds: null, fold_map: null, tta: true,
                   tile_step: 0.5, device: auto, fu_mask_source: auto, channel_map: null,
                   lesion_label: null}
    registration: {seed: 42}
    tracking:     {max_distance_mm: 20.0, overlap_min: 0.1}
    analysis:     {sources: null}

Defaults live in one place each: a kernel's own constant or keyword default
(e.g. :data:`petcohort.engine.kernels.sulpeak.DEFAULT_RADIUS_MM`), read here
lazily (so importing this module stays cheap), never a repeated literal.
Every value is checked when the configuration is built: an unknown section or
key, a wrong type or an out-of-range value raises one :class:`ConfigError`
naming the dotted key (``quantify.radius_mm``) and what is expected, before
any task runs.

A stage declares the dotted keys it reads (``register_stage(...,
params=("quantify.radius_mm", ...))``); :meth:`RunConfig.params_for`
resolves them to the values recorded in its study-stage records.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from petcohort.engine.errors import ConfigError
from petcohort.pipelines.config_checks import (
    _boolean, _channel_map, _choice, _connectivity, _folds, _fraction, _label_name, _non_negative, _pair_check,
    _path, _plain, _positive, _Section, _seed, _sources, _spec, path_identity)

__all__ = ["RunConfig", "QuantifyConfig", "EvaluateConfig", "ThresholdConfig", "PercistConfig", "SuvConfig",
           "SegmentConfig", "RegistrationConfig", "TrackingConfig", "AnalysisConfig", "SECTIONS", "ParamKeys",
           "config_hash", "load_config", "parse_overrides", "normalize_key", "to_yaml"]

# -- the sections ------------------------------------------------------------------------------
_SULPEAK = "petcohort.engine.kernels.sulpeak"
_LABEL = "petcohort.engine.kernels.label"
_METRICS = "petcohort.engine.kernels.metrics"
_THRESHOLD = "petcohort.engine.segment.threshold"
_PERCIST = "petcohort.engine.stats.percist"
_TRACKING = "petcohort.engine.stats.tracking"
_REGISTRATION = "petcohort.engine.segment.registration"
_EXPORT = "petcohort.storage.nnunet_export"
_SUV = "petcohort.storage.suv_header"


@dataclass(frozen=True)
class QuantifyConfig(_Section):
    """Lesions and SULpeak (docs/methods.md "SULpeak", "Lesions and volumes")."""

    NAME: ClassVar[str] = "quantify"
    radius_mm: float = _spec(_positive, "SULpeak sphere radius (mm); 6.0 = the paper's 1.2 cm diameter",
                             owner=(_SULPEAK, "DEFAULT_RADIUS_MM"))
    connectivity: int = _spec(_connectivity, "lesion connectivity, used identically everywhere (6, 18, 26)",
                              owner=(_LABEL, "label", "connectivity"))


@dataclass(frozen=True)
class EvaluateConfig(_Section):
    """Segmentation evaluation (docs/methods.md "Segmentation evaluation")."""

    NAME: ClassVar[str] = "evaluate"
    overlap: float = _spec(_fraction, "fraction of a lesion's voxels that must overlap to detect it",
                           owner=(_METRICS, "detection", "overlap"))


@dataclass(frozen=True)
class ThresholdConfig(_Section):
    """Classical threshold segmentations (``threshold`` stage)."""

    NAME: ClassVar[str] = "threshold"
    fixed: float = _spec(_positive, "fixed SUVbw level (also the seed level of the relative mask)",
                         owner=(_THRESHOLD, "fixed", "level"))
    relative: float = _spec(_fraction, "fraction of each hot region's SUVmax", owner=(_THRESHOLD, "relative",
                                                                                     "fraction"))


@dataclass(frozen=True)
class PercistConfig(_Section):
    """PERCIST 1.0 (docs/methods.md "PERCIST 1.0"); cut-offs default to Wahl 2009."""

    NAME: ClassVar[str] = "percist"
    sphere_mm: float = _spec(_positive, "liver reference sphere diameter (mm)",
                             owner=(_PERCIST, "assess_scan", "sphere_mm"))
    pct_change: float = _spec(_positive, "SULpeak change for PMR/PMD (%)",
                              owner=(_PERCIST, "percist_call", "pct_change"))
    abs_change: float = _spec(_positive, "SULpeak change for PMR/PMD (SUL units)",
                              owner=(_PERCIST, "percist_call", "abs_change"))
    tlg_increase_pct: float = _spec(_positive, "TLG increase of the hottest 5 lesions for PMD (%)",
                                    owner=(_PERCIST, "percist_call", "tlg_increase_pct"))
    tlg_requires_no_sul_decline: bool = _spec(_boolean, "the TLG rule applies only without a SULpeak decline",
                                              owner=(_PERCIST, "percist_call", "tlg_requires_no_sul_decline"))
    uptake_tolerance_min: float = _spec(_non_negative, "QC: allowed uptake-time difference (min)",
                                        owner=(_PERCIST, "percist_call", "uptake_tolerance_min"))
    liver_tolerance: tuple = _spec(_pair_check, "QC: allowed reference change (relative, SUL)",
                                   owner=(_PERCIST, "percist_call", "liver_tolerance"))

    def call_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`petcohort.engine.stats.percist.percist_call`."""
        return {"pct_change": self.pct_change, "abs_change": self.abs_change,
                "tlg_increase_pct": self.tlg_increase_pct,
                "tlg_requires_no_sul_decline": self.tlg_requires_no_sul_decline,
                "uptake_tolerance_min": self.uptake_tolerance_min, "liver_tolerance": self.liver_tolerance}


@dataclass(frozen=True)
class SuvConfig(_Section):
    """SUV/SUL (docs/methods.md "SUV from DICOM", "SUL"); ``lbm``/``always_backcompute`` act where SUL is computed
    (ingest); a run records them with the network input clip."""

    NAME: ClassVar[str] = "suv"
    clip: float = _spec(_positive, "nnU-Net PET channel: SUVbw clipped to [0, clip]",
                        owner=(_EXPORT, "clipped_pet", "suv_clip"))
    lbm: str = _spec(_choice("janmahasatian", "james"), "lean body mass formula of SUL",
                     owner=(_SUV, "suv_from_datasets", "lbm"))
    always_backcompute: bool = _spec(_boolean, "reference time from the frame (rule 3) first",
                                     owner=(_SUV, "suv_from_datasets", "always_backcompute"))


#: Baseline mask channel choices of U-Net_FU (``stage_segment``).
MASK_SOURCES = ("auto", "manual", "nnunet_bl")


@dataclass(frozen=True)
class SegmentConfig(_Section):
    """nnU-Net inference (docs/methods.md "nnU-Net networks"; ``stage_segment``)."""

    NAME: ClassVar[str] = "segment"
    model_bl: str | None = _spec(_path("folder"), "trained U-Net_BL folder (.../<Trainer>__<Plans>__3d_fullres)",
                                 default=None)
    model_fu: str | None = _spec(_path("folder"), "trained U-Net_FU folder", default=None)
    folds: tuple[int, ...] | None = _spec(_folds, "folds of the ensemble (null = every fold present)", default=None)
    fold_map: str | None = _spec(_path("file"), "folds.json of export-nnunet (cross-validated predictions)",
                                 default=None)
    tta: bool = _spec(_boolean, "test-time mirroring", default=True)
    tile_step: float = _spec(_fraction, "sliding-window step (fraction of the patch)", default=0.5)
    device: str = _spec(_choice("auto", "cpu", "cuda"), "inference device", default="auto")
    fu_mask_source: str = _spec(_choice(*MASK_SOURCES), "baseline mask channel of U-Net_FU", default="auto")
    channel_map: dict[str, str] | None = _spec(
        _channel_map, "model channel name -> pet | ct | baseline_pet | baseline_mask, for names the synonyms "
                      "miss (PET/SUV/PT/SUVbw, CT/CTres/CT_HU, PET_BL, noNorm, ...)", default=None)
    lesion_label: str | None = _spec(_label_name, "lesion label name in dataset.json labels (null: lesion/tumor/"
                                                  "tumour/lesions, or the only foreground label)", default=None)


@dataclass(frozen=True)
class RegistrationConfig(_Section):
    """Rigid baseline -> follow-up registration (docs/methods.md "Registration")."""

    NAME: ClassVar[str] = "registration"
    seed: int = _spec(_seed, "ANTs random seed (deterministic registration)",
                      owner=(_REGISTRATION, "register_rigid", "seed"))


@dataclass(frozen=True)
class TrackingConfig(_Section):
    """Lesion matching between baseline and follow-up (``track`` stage)."""

    NAME: ClassVar[str] = "tracking"
    max_distance_mm: float = _spec(_positive, "largest centroid distance of a distance match (mm)",
                                   owner=(_TRACKING, "match_lesions", "max_distance_mm"))
    overlap_min: float = _spec(_fraction, "smallest overlap coefficient counted as overlap",
                               owner=(_TRACKING, "match_lesions", "overlap_min"))


@dataclass(frozen=True)
class AnalysisConfig(_Section):
    """Which segmentation sources the analysis stages read."""

    NAME: ClassVar[str] = "analysis"
    sources: tuple[str, ...] | None = _spec(_sources, "seg/<name> sources to analyse (null = all; manual always)",
                                            default=None)


SECTIONS: dict[str, type] = {c.NAME: c for c in (QuantifyConfig, EvaluateConfig, ThresholdConfig, PercistConfig,
                                                  SuvConfig, SegmentConfig, RegistrationConfig, TrackingConfig,
                                                  AnalysisConfig)}

#: Flat names of the former RunConfig (keyword arguments, attributes, stage params) -> dotted keys.
_FLAT = {"connectivity": "quantify.connectivity", "radius_mm": "quantify.radius_mm",
         "overlap": "evaluate.overlap", "suv_clip": "suv.clip", "threshold_fixed": "threshold.fixed",
         "threshold_relative": "threshold.relative", "percist_sphere_mm": "percist.sphere_mm",
         "lbm": "suv.lbm", "sources": "analysis.sources"}
#: ``extra`` keys of the former RunConfig that are now typed -> dotted keys.
_EXTRA = {**{k: f"segment.{k}" for k in ("model_bl", "model_fu", "folds", "fold_map", "tta", "tile_step",
                                          "device", "fu_mask_source", "channel_map", "lesion_label")},
          "registration_seed": "registration.seed"}


def _known_keys(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def normalize_key(key: str) -> str:
    """A dotted key ``section.key`` or a section name, checked; former flat names are translated.

    Raises
    ------
    ConfigError
        ``CONFIG_UNKNOWN_FIELD`` naming the key and the known ones.
    """
    key = _FLAT.get(key, key)
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError("CONFIG_UNKNOWN_FIELD", f"unknown configuration section {section!r} (in {key!r}); "
                                                  f"known: {', '.join(SECTIONS)}")
    if name and name not in _known_keys(section):
        raise ConfigError("CONFIG_UNKNOWN_FIELD", f"unknown configuration key {key!r}; {section} keys: "
                                                  f"{', '.join(_known_keys(section))}")
    return key


class ParamKeys(tuple):
    """The dotted config keys a stage reads; ``in`` also accepts the former flat names (``"radius_mm"``)."""

    def __contains__(self, key: object) -> bool:  # type: ignore[override]
        if isinstance(key, str) and key in _FLAT:
            key = _FLAT[key]
        return tuple.__contains__(self, key)


def _section(name: str, value: Any) -> Any:
    cls = SECTIONS[name]
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError("BAD_TYPE", f"section {name} must be a mapping of keys, got {value!r}")
    for key in value:
        normalize_key(f"{name}.{key}")
    return cls(**dict(value))


@dataclass(frozen=True, init=False)
class RunConfig:
    """The resolved run configuration: one frozen section per stage/method.

    Build it from a file with :func:`load_config`, from a mapping with
    :meth:`from_dict`, or in code: ``RunConfig(quantify={"radius_mm": 6.0})``.
    The former flat keywords (``radius_mm=``, ``connectivity=``, ``suv_clip=``,
    ``sources=``, ...) and the former ``extra`` dict (nnU-Net and registration
    options) are still accepted and land in their sections; ``extra`` keys that
    are not configuration (test or plug-in options such as ``sleep_s``) are kept
    in :attr:`options`, which is never written to YAML nor recorded.

    Attributes ``connectivity``, ``radius_mm``, ``overlap``, ``suv_clip``,
    ``threshold_fixed``, ``threshold_relative``, ``percist_sphere_mm``, ``lbm``,
    ``sources`` and ``extra`` read the sections (the stages' former access).
    """

    quantify: QuantifyConfig
    evaluate: EvaluateConfig
    threshold: ThresholdConfig
    percist: PercistConfig
    suv: SuvConfig
    segment: SegmentConfig
    registration: RegistrationConfig
    tracking: TrackingConfig
    analysis: AnalysisConfig
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __init__(self, *, extra: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        sections: dict[str, Any] = {name: kwargs.pop(name) for name in list(kwargs) if name in SECTIONS}
        flat: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name not in _FLAT:
                raise ConfigError("CONFIG_UNKNOWN_FIELD", f"unknown run option {name!r}; sections: "
                                                          f"{', '.join(SECTIONS)}")
            flat[_FLAT[name]] = value
        free: dict[str, Any] = dict(options or {})
        for name, value in (extra or {}).items():
            if name in _EXTRA:
                flat[_EXTRA[name]] = value
            else:
                free[name] = value
        for name in SECTIONS:
            base = _section(name, sections.get(name))
            changes = {k.split(".", 1)[1]: v for k, v in flat.items() if k.split(".", 1)[0] == name}
            object.__setattr__(self, name, dataclasses.replace(base, **changes) if changes else base)
        object.__setattr__(self, "options", free)

    # -- the former flat attributes -----------------------------------------------------------
    connectivity = property(lambda self: self.quantify.connectivity)
    radius_mm = property(lambda self: self.quantify.radius_mm)
    overlap = property(lambda self: self.evaluate.overlap)
    suv_clip = property(lambda self: self.suv.clip)
    threshold_fixed = property(lambda self: self.threshold.fixed)
    threshold_relative = property(lambda self: self.threshold.relative)
    percist_sphere_mm = property(lambda self: self.percist.sphere_mm)
    lbm = property(lambda self: self.suv.lbm)
    sources = property(lambda self: self.analysis.sources)

    @property
    def extra(self) -> dict[str, Any]:
        """The nnU-Net and registration options as the former ``extra`` dict (unset ones left out), plus options."""
        out = {k: _plain(v) for k, v in self.segment.to_dict().items() if v is not None}
        return {**out, "registration_seed": self.registration.seed, **self.options}

    # -- access by dotted key -----------------------------------------------------------------
    def get(self, key: str) -> Any:
        """Value of dotted ``key`` (``"quantify.radius_mm"``) or a section's dict (``"quantify"``)."""
        key = normalize_key(key)
        section, _, name = key.partition(".")
        sec = getattr(self, section)
        return _plain(getattr(sec, name)) if name else sec.to_dict()

    def params_for(self, keys: Iterable[str]) -> dict[str, Any]:
        """Flat ``{"section.key": value}`` of the dotted keys (or whole sections) in ``keys``, sorted.

        Paths are recorded by :func:`~petcohort.pipelines.config_checks.path_identity`
        (model folder names, a file's name and content hash), never as paths.
        """
        out: dict[str, Any] = {}
        for key in keys:
            key = normalize_key(key)
            section, _, name = key.partition(".")
            names = [name] if name else _known_keys(section)
            for n in names:
                sec = getattr(self, section)
                check = next(f.metadata["check"] for f in dataclasses.fields(sec) if f.name == n)
                out[f"{section}.{n}"] = _plain(path_identity(check, getattr(sec, n)))
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {key: value}}`` (JSON/YAML-safe; :attr:`options` left out)."""
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "RunConfig":
        """Build from ``{section: {key: value}}``; unknown sections/keys and bad values raise ConfigError."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError("BAD_TYPE", f"a run configuration must be a mapping of sections, got "
                                                  f"{type(d).__name__}")
        for name in d:
            normalize_key(str(name))
            if "." in str(name):
                raise ConfigError("CONFIG_UNKNOWN_FIELD", f"{name!r}: write keys inside their section")
        return cls(**{name: _section(name, value) for name, value in d.items()})

    def replace(self, overrides: Mapping[str, Any]) -> "RunConfig":
        """A copy with dotted-key ``overrides`` (``{"quantify.radius_mm": 6.0}``) applied and checked."""
        d = self.to_dict()
        for key, value in overrides.items():
            key = normalize_key(key)
            section, _, name = key.partition(".")
            if not name:
                raise ConfigError("CONFIG_UNKNOWN_FIELD", f"override {key!r} must name a key: {section}.<key>")
            d[section][name] = value
        return RunConfig(options=self.options, **{name: _section(name, v) for name, v in d.items()})


def to_yaml(config: RunConfig) -> str:
    """The resolved configuration as YAML (parses back with :func:`load_config` to an equal config)."""
    import yaml  # noqa: PLC0415 - only the CLI and the runner's outputs need it

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["quantify.radius_mm=6.0", ...]`` -> ``{"quantify.radius_mm": 6.0}`` (values parsed as YAML scalars)."""
    import yaml  # noqa: PLC0415

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("BAD_VALUE", f"--set expects KEY=VALUE (e.g. quantify.radius_mm=6.0), got "
                                                  f"{item!r}")
        try:
            out[normalize_key(key.strip())] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError("BAD_VALUE", f"--set {key.strip()}: value {text!r} is not YAML: {exc}") from None
    return out


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read ``run.yaml`` (None: every default) and apply dotted-key ``overrides`` (CLI flags win).

    Raises
    ------
    ConfigError
        ``CONFIG_FILE_MISSING``, ``CONFIG_BAD_YAML``, ``CONFIG_UNKNOWN_FIELD``
        (unknown section or key, named), ``BAD_VALUE`` (the key and the
        expected type/range).
    """
    config = RunConfig()
    if path is not None:
        import yaml  # noqa: PLC0415

        p = Path(path)
        if not p.is_file():
            raise ConfigError("CONFIG_FILE_MISSING", f"run configuration {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError("CONFIG_BAD_YAML", f"run configuration {str(p)!r} is not valid YAML: {exc}") from None
        config = RunConfig.from_dict(data)
    return config.replace(overrides) if overrides else config


def config_hash(config: RunConfig, params: Iterable[str]) -> str:
    """SHA-256 (16 hex) of the resolved values of the dotted keys in ``params``."""
    blob = json.dumps(config.params_for(params), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
