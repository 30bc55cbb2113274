"""petcohort.engine.stats: cohort statistics on arrays, pandas and xarray.

The ``ds.cohort`` xarray accessor is registered by importing
:mod:`petcohort.engine.stats.accessor` (``pipelines/tables.py`` does). The
package itself imports nothing: a worker that runs tracking or PERCIST does not
pay for pandas, xarray and scipy.stats (about 1 s per process).
"""
