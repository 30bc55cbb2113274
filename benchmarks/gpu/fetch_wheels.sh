#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that benchmarks/gpu/run.sh installs
# offline on a lent GPU machine (Python 3.12, x86-64, no network; its image
# already holds numpy, scipy, pandas, pyarrow, xarray, cupy-cuda13x, pyyaml,
# rich, typer, psutil, pytest, hypothesis, click, cloudpickle, toolz, msgpack,
# nvidia-ml-py, numba). About 23 MB into ./.whl, which must be git-ignored and
# named in the device tool's `carry`:
#     echo /.whl/ >> .git/info/exclude && bash benchmarks/gpu/fetch_wheels.sh
# Versions are those of the project's .venv when this was written.
set -euo pipefail
PIP=${PIP:-.venv/bin/pip}
"$PIP" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl \
    dask==2026.8.0 distributed==2026.8.0 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 \
    google-crc32c==1.9.0 tblib==3.2.2 zict==3.0.0 locket==1.0.0 partd==1.4.2 tornado==6.6.1 \
    connected-components-3d==4.1.1 pydicom==3.0.2 nibabel==5.4.2 \
    dask-cuda==26.10.0 "rapids-dask-dependency==26.10.*"
du -sh .whl
