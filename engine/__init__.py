"""petcohort.engine: computation only (no file IO, no CLI, never computes a Dask graph)."""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("petcohort")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
