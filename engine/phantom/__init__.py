"""petcohort.engine.phantom: the synthetic whole-body FDG PET/CT phantom (pure computation).

Modules, from geometry up: ``shapes`` (analytic solids rasterised in their
bounding boxes), ``body``/``anatomy``/``skeleton`` (a parametric adult body),
``tissues`` (SUV and HU per tissue class), ``lesions`` (irregular metastases),
``render`` (class map, lesion ids, true SUV/HU), ``physics`` (PSF, noise, SUV
factors), ``design`` (sites, scanners, patients, visits, responses) and
``study`` (one rendered study). File output lives in ``pipelines/synthetic.py``.
"""
from .design import CATEGORIES, SCANNERS, PatientDesign, Scanner, design_patient
from .study import SimulatedStudy, simulate_study

__all__ = [
           "CATEGORIES",
           "SCANNERS",
           "PatientDesign",
           "Scanner",
           "SimulatedStudy",
           "design_patient",
           "simulate_study",
]
