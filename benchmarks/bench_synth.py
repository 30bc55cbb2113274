"""Synthetic study cost: render + DICOM-equivalent encode of one study, per scanner.

Baseline: one ``scipy.ndimage.gaussian_filter`` of the same volume (float32,
the scanner PSF), i.e. the price of the cheapest full-volume pass. The ratio
says how many such passes one whole synthetic study costs.

Run: ``.venv/bin/python benchmarks/bench_synth.py [--repeat N] [--voxel-mm MM]``
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from _harness import report, timeit
from petcohort.engine.phantom.design import SCANNERS, design_patient
from petcohort.engine.phantom.physics import FWHM_TO_SIGMA
from petcohort.engine.phantom.study import simulate_study
from petcohort.pipelines.synthetic import quantise_pet
from scipy import ndimage as ndi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--voxel-mm", type=float, default=None)
    args = ap.parse_args()
    patient = design_patient(0, 0, sites=2)
    for scanner in (s for pair in SCANNERS.values() for s in pair):
        # the same patient and visit, imaged on each scanner in turn
        visits = [dataclasses.replace(patient.visits[0], scanner=scanner)] + patient.visits[1:]
        design = dataclasses.replace(patient, visits=visits)

        def render(design=design):
            sim = simulate_study(design, 0, seed=0, voxel_mm=args.voxel_mm)
            quantise_pet(sim.pet, sim.factors["bw_factor"])
            return sim

        sim = render()
        vol = sim.pet.astype(np.float32)
        sigma = [scanner.fwhm_mm * FWHM_TO_SIGMA / s for s in sim.grid.spacing]
        cand = timeit(render, repeat=args.repeat, warmup=0)
        base = timeit(lambda vol=vol, sigma=sigma: ndi.gaussian_filter(vol, sigma, mode="nearest", truncate=3.0),
                      repeat=args.repeat, warmup=0)
        report(f"synth_study_{scanner.name}", "simulate_study+encode", cand, "scipy gaussian_filter", base,
               extra={"shape": list(sim.grid.shape), "spacing": list(sim.grid.spacing),
                      "pet_mb": sim.pet.nbytes / 1e6, "lesions": len(sim.lesions)})


if __name__ == "__main__":
    main()
