"""petcohort.engine.stats: cohort statistics on arrays, pandas and xarray.

Importing the package registers the ``ds.cohort`` xarray accessor.
"""
from petcohort.engine.stats import accessor as _accessor  # noqa: F401 - registers ds.cohort
