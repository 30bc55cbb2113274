"""``petcohort synth``: a deterministic synthetic multi-site longitudinal PET/CT cohort.

Designs the patients (``engine.phantom.design``), renders each study
(``engine.phantom.study``), makes the stored PET exactly what a DICOM round
trip returns (int16 + per-slice slope, ``storage.dicom_write``), computes the
ground-truth PERCIST call of every follow-up from the noise-free blurred SUL
image with the team's PERCIST module, and writes the cohort as a store, a
DICOM tree or autoPET-style NIfTI folders, plus one coronal MIP per site.
Same seed, same arrays: every random draw comes from per-patient/per-visit
``SeedSequence`` children (see ``engine.phantom.design.stream``).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from petcohort.engine.errors import InputError, PetCohortError
from petcohort.engine.phantom.design import MAX_SITES, PatientDesign, design_patient
from petcohort.engine.phantom.physics import F18_HALF_LIFE_S
from petcohort.engine.phantom.study import SimulatedStudy, simulate_study

__all__ = ["FORMATS", "quantise_pet", "synthesize", "truth_percist", "write_mip"]

log = logging.getLogger(__name__)

FORMATS = ("store", "dicom", "nifti")
_EPOCH = dt.datetime(2025, 1, 6, 8, 30)  # synthetic calendar: first baseline injection
_FRAME_S = 120.0


def _bad(name: str, value: Any, expected: str) -> InputError:
    return InputError("BAD_VALUE", f"{name} must be {expected}, got {value!r}")


def _check(patients, sites, seed, fmt, voxel_mm, fov_scale) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    if not is_int(patients) or patients < 1:
        raise _bad("patients", patients, "an integer >= 1")
    if not is_int(sites) or not 1 <= sites <= MAX_SITES:
        raise _bad("sites", sites, f"an integer in 1..{MAX_SITES}")
    if not is_int(seed) or seed < 0:
        raise _bad("seed", seed, "an integer >= 0")
    if fmt not in FORMATS:
        raise _bad("fmt", fmt, f"one of {', '.join(FORMATS)}")
    if voxel_mm is not None and (not is_num(voxel_mm) or not 1.0 <= float(voxel_mm) <= 20.0):
        raise _bad("voxel_mm", voxel_mm, "None or a size in mm within [1, 20]")
    if not is_num(fov_scale) or not 0.2 <= float(fov_scale) <= 1.5:
        raise _bad("fov_scale", fov_scale, "a body scale within [0.2, 1.5]")


def quantise_pet(suv: np.ndarray, bw_factor: float) -> np.ndarray:
    """The SUVbw a DICOM reader gets back after int16 + per-slice-slope encoding.

    Stored values are activity concentrations (Bq/mL = SUV / ``bw_factor``),
    as in a BQML series, so every output format carries the same SUVs.
    """
    from petcohort.storage.dicom_write import decode_pet_int16, encode_pet_int16

    stored, slopes = encode_pet_int16(suv, bw_factor)
    return decode_pet_int16(stored, slopes, bw_factor)


def truth_percist(studies: list[dict], *, spacing_of) -> list[dict | None]:
    """Ground-truth PERCIST of each follow-up from the noise-free SUL images.

    Parameters
    ----------
    studies : list of dict
        Per visit: ``sul`` (noise-free blurred SUL), ``ids`` (lesion ids),
        ``liver``, ``aorta``, ``bone`` masks, ``uptake_min``, ``new`` (new
        lesions vs baseline), in timepoint order (baseline first).
    spacing_of : callable  index -> (sz, sy, sx)

    Returns
    -------
    list
        ``None`` for the baseline, then a dict (``category``, ``rule``,
        ``reason``, ``qc_flags``, ``sulpeak_delta_pct``) per follow-up.
    """
    from petcohort.engine.stats.percist import (
        assess_scan,
        organ_of_lesions,
        percist_call,
    )

    def assess(i: int):
        s = studies[i]
        ids = s["ids"]
        present = np.unique(ids[ids > 0])
        # consecutive labels 1..n, as the kernels expect
        lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.int32)
        lut[present] = np.arange(1, present.size + 1)
        labels = lut[ids]
        n = int(present.size)
        organ = organ_of_lesions(labels, n, bone=s["bone"], liver=s["liver"])
        return assess_scan(s["sul"], labels, n, spacing=spacing_of(i), liver=s["liver"],
                           aorta=s["aorta"], organ_of=organ)

    out: list[dict | None] = [None]
    try:
        base = assess(0)
    except PetCohortError as exc:
        return out + [{"category": None, "reason": exc.reason, "rule": None, "qc_flags": []}
                      for _ in studies[1:]]
    for i in range(1, len(studies)):
        try:
            call = percist_call(base, assess(i), new_lesions=int(studies[i]["new"]),
                                uptake_min=(studies[0]["uptake_min"], studies[i]["uptake_min"]))
        except PetCohortError as exc:
            out.append({"category": None, "reason": exc.reason, "rule": None, "qc_flags": []})
            continue
        out.append({"category": call.category, "reason": call.reason, "rule": call.rule,
                    "qc_flags": list(call.qc_flags),
                    "sulpeak_delta_pct": call.evidence.get("sulpeak_delta_pct")})
    return out


def write_mip(path: Path, pet: np.ndarray, spacing, title: str) -> None:
    """Coronal MIP, inverse grey, head up, SUV 0-10 (contracts: ``max(axis=1)``, Z flipped)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    mip = pet.max(axis=1)[::-1]
    sz, _, sx = spacing
    h, w = mip.shape[0] * sz, mip.shape[1] * sx
    fig = Figure(figsize=(4.0, 4.0 * h / w + 0.4), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1 - 0.4 / (4.0 * h / w + 0.4)))
    ax.imshow(mip, cmap="gray_r", vmin=0.0, vmax=10.0, aspect=sz / sx, interpolation="bilinear")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor="white")


def _attrs(design: PatientDesign, t: int, sim: SimulatedStudy, key_patient: str, key_study: str) -> dict:
    v = design.visits[t]
    b = design.body
    f = sim.factors
    return {
        "patient": key_patient, "study": key_study, "timepoint": t, "days_since_baseline": int(v.days),
        "site": design.site, "scanner": v.scanner.name, "manufacturer": v.scanner.manufacturer,
        "model": v.scanner.model, "spacing": [float(s) for s in sim.grid.spacing],
        "origin": [float(o) for o in sim.grid.origin], "weight_kg": float(v.weight_kg),
        "height_m": float(b.height_m), "sex": b.sex, "injected_dose_bq": float(v.dose_bq),
        "uptake_min": float(v.uptake_min),
        "suv": {"bw_factor": f["bw_factor"], "lbm_factor": f["lbm_factor"], "units": "BQML",
                "decay_correction": "START", "reference_rule": "synthetic", "overrides": {},
                "half_life_s": F18_HALF_LIFE_S, "decayed_dose_bq": f["decayed_dose_bq"],
                "lbm_formula": "janmahasatian"},
        "sul_per_suvbw": f["sul_per_suvbw"],
        "sul_reason": None if f["sul_per_suvbw"] is not None else "SUV_MISSING_SEX",
        "source": "synthetic", "fwhm_mm": v.scanner.fwhm_mm, "noise_cov_liver": sim.cov_liver,
    }


class _Writer:
    """Writes studies in one of the output formats."""

    def __init__(self, out, fmt: str) -> None:
        self.fmt = fmt
        self.store = None
        if fmt == "store":
            from petcohort.storage.store import CohortStore

            self.store = CohortStore.create(out)
            local = Path(str(out)) if "://" not in str(out) else None
            self.root = local
        else:
            self.root = Path(out)
            self.root.mkdir(parents=True, exist_ok=True)

    def patient_key(self, design: PatientDesign) -> str:
        if self.store is not None:
            return self.store.pseudonym(design.source_id)
        return f"case-{design.index + 1:04d}"

    def write(self, design: PatientDesign, t: int, pkey: str, attrs: dict, arrays: dict) -> None:
        if self.fmt == "store":
            from petcohort.storage.keys import study_key

            key = study_key(pkey, t)
            attrs["study"] = key
            self.store.add_study(key, attrs)
            self.store.write_arrays(key, arrays)
            return
        v = design.visits[t]
        when = _EPOCH + dt.timedelta(days=3 * design.index + v.days, minutes=30 * (design.index % 4))
        scan_time = when + dt.timedelta(minutes=v.uptake_min)
        # autoPET names study folders by date (MM-DD-YYYY-...); DICOM studies by timepoint
        leaf = f"{scan_time:%m-%d-%Y}-NA-PET-CT-T{t}" if self.fmt == "nifti" else f"T{t}"
        folder = self.root / pkey / leaf
        meta = {k: attrs[k] for k in ("timepoint", "days_since_baseline", "site", "scanner", "weight_kg",
                                      "height_m", "sex", "injected_dose_bq", "uptake_min")}
        meta.update(patient_id=design.source_id, injection_datetime=when.isoformat(),
                    scan_datetime=scan_time.isoformat(), study_date=scan_time.date().isoformat())
        from petcohort.storage.nifti import write_nifti, write_study_folder

        sp, org = attrs["spacing"], attrs["origin"]
        if self.fmt == "nifti":
            write_study_folder(folder, pet=arrays["pet"], ct=arrays["ct"], seg=arrays["seg/manual"],
                               spacing=sp, origin=org, meta=meta)
        else:
            from petcohort.storage.dicom_write import write_ct_series, write_pet_series

            patient = {"id": design.source_id, "name": design.name, "weight_kg": v.weight_kg,
                       "height_m": design.body.height_m, "sex": design.body.sex}
            scan = {"acquisition_datetime": scan_time, "injection_datetime": when, "dose_bq": v.dose_bq,
                    "half_life_s": F18_HALF_LIFE_S, "frame_duration_s": _FRAME_S,
                    "manufacturer": v.scanner.manufacturer, "model": v.scanner.model, "site": design.site}
            write_pet_series(folder / "PT", arrays["pet"], spacing=sp, origin=org, patient=patient, scan=scan)
            write_ct_series(folder / "CT", arrays["ct"], spacing=sp, origin=org, patient=patient, scan=scan)
        (folder / "truth").mkdir(parents=True, exist_ok=True)
        for name, arr in arrays.items():
            if name in ("pet", "ct") or (self.fmt == "nifti" and name == "seg/manual"):
                continue
            write_nifti(folder / "truth" / f"{name.replace('/', '_')}.nii.gz", arr, spacing=sp, origin=org)
        (folder / "truth" / "truth.json").write_text(json.dumps(attrs["truth"], indent=1, default=float))


def synthesize(out, *, patients: int = 12, sites: int = 2, seed: int = 0, fmt: str = "store",
               voxel_mm: float | None = None, fov_scale: float = 1.0, mip_dir: str | Path | None = None) -> dict:
    """Generate the synthetic cohort.

    Parameters
    ----------
    out : path or URL
        The cohort store (``fmt="store"``: created, must not exist) or a folder.
    patients : int  >= 1
    sites : int  1..2 (two scanners each)
    seed : int  >= 0; same seed, same arrays
    fmt : {"store", "dicom", "nifti"}
    voxel_mm : float, optional  isotropic PET voxel size (mm) overriding every scanner
    fov_scale : float  body scale (1 = adult; tests use ~0.4 for tiny volumes)
    mip_dir : path, optional  where the per-site MIP PNGs go (default ``<out>/mips`` for local outputs)

    Returns
    -------
    dict  summary: counts, designed and ground-truth PERCIST categories, MIP paths, seconds

    Raises
    ------
    InputError  ``BAD_VALUE`` naming the parameter.
    """
    _check(patients, sites, seed, fmt, voxel_mm, fov_scale)
    t0 = time.perf_counter()
    writer = _Writer(out, fmt)
    mip_root = Path(mip_dir) if mip_dir is not None else (None if writer.root is None else writer.root / "mips")
    mips: list[str] = []
    n_studies = n_lesions = 0
    designed: dict[str, int] = {}
    truth: dict[str, int] = {}
    agree = 0
    for i in range(patients):
        design = design_patient(seed, i, sites=sites, scale=float(fov_scale))
        pkey = writer.patient_key(design)
        held: list[dict] = []
        spacings = []
        records = []
        for t, visit in enumerate(design.visits):
            sim = simulate_study(design, t, seed=seed, voxel_mm=voxel_mm)
            attrs = _attrs(design, t, sim, pkey, "")
            pet = quantise_pet(sim.pet, attrs["suv"]["bw_factor"])
            arrays = {"pet": pet, "ct": sim.ct, "truth/lesion_ids": sim.lesion_ids, **sim.masks}
            sul = attrs["sul_per_suvbw"] or 1.0
            new = sum(1 for les in sim.lesions if les["first_visit"] > 0)
            held.append({"sul": sim.pet_clean * np.float32(sul), "ids": sim.lesion_ids,
                         "liver": sim.masks["organs/liver"], "aorta": sim.masks["organs/aorta"],
                         "bone": sim.masks["organs/bone"], "uptake_min": visit.uptake_min, "new": new})
            spacings.append(sim.grid.spacing)
            records.append((t, attrs, arrays, sim.lesions))
            if t == 0 and i < sites and mip_root is not None:
                p = mip_root / f"site-{design.site}.png"
                write_mip(p, pet, sim.grid.spacing, f"site {design.site}, {visit.scanner.model}, baseline")
                mips.append(str(p))
            n_lesions += len(sim.lesions)
        calls = truth_percist(held, spacing_of=spacings.__getitem__)
        del held
        for (t, attrs, arrays, lesions), call in zip(records, calls):
            visit = design.visits[t]
            attrs["truth"] = {"percist": None if call is None else call["category"],
                              "percist_detail": call, "designed_response": visit.designed,
                              "lesions": lesions, "n_lesions": len(lesions)}
            writer.write(design, t, pkey, attrs, arrays)
            n_studies += 1
            if visit.designed:
                designed[visit.designed] = designed.get(visit.designed, 0) + 1
                cat = str(call["category"]) if call else "None"
                truth[cat] = truth.get(cat, 0) + 1
                agree += int(cat == visit.designed)
        log.info("synthetic patient %d/%d: %d studies", i + 1, patients, len(records))
    summary = {"format": fmt, "out": str(out), "patients": patients, "sites": sites, "seed": seed,
               "studies": n_studies, "lesions": n_lesions, "designed_response": designed,
               "truth_percist": truth, "designed_equals_truth": agree, "mips": mips,
               "voxel_mm": voxel_mm, "fov_scale": fov_scale,
               "seconds": round(time.perf_counter() - t0, 2)}
    if writer.store is not None:
        writer.store.write_json("synthetic", {k: v for k, v in summary.items() if k not in ("out", "seconds")})
    return summary

