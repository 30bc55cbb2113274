#!/usr/bin/env bash
# GPU checks for a lent H100/H200 machine. Run from the repo root with $OUT set:
#     OUT=/some/empty/dir bash benchmarks/gpu/run.sh
# Finishes within 8 minutes (each step has its own `timeout`); writes at most
# 8 files under $OUT (the device tool returns no more):
#   nvidia-smi.txt  install.log  pytest_gpu.log  bench.log  cuda_cluster.log
#   results.json (the benchmarks' JSON records)  summary.txt (one line per step)
#
# Install: with network, a venv (--system-site-packages, so an image's
# CUDA/cupy stay usable) gets `pip install -e '.[gpu,test]'`. Offline (the
# lent machines reach nothing), the wheels that benchmarks/gpu/fetch_wheels.sh
# put in ./.whl (dask, distributed, zarr, dask-cuda, cc3d, ...; carried along)
# are installed with --no-index; an image's own cupy (e.g. cupy-cuda13x) is
# used as is. PY=/path/to/python skips the install. A step that cannot run says so in summary.txt; nothing is
# faked.
set -u -o pipefail
: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1

BUDGET=470  # seconds for all steps: 8 minutes minus a margin

step() {  # step NAME SECONDS LOGFILE CMD...  -> runs CMD under timeout, logs, records status
    local name=$1 secs=$2 log=$3; shift 3
    local t0=$(date +%s)
    local left=$(( BUDGET - (t0 - START) ))
    if [ "$left" -lt 10 ]; then echo "$name skipped: 8-minute budget spent" | tee -a "$SUMMARY"; return 124; fi
    [ "$secs" -gt "$left" ] && secs=$left
    echo "== $name ($(date -u +%H:%M:%S))" >>"$log"
    timeout --signal=TERM --kill-after=10 "$secs" "$@" >>"$log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$SUMMARY"
    return $rc
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >>"$OUT/nvidia-smi.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/nvidia-smi.txt" 2>&1 || true

# -- environment -------------------------------------------------------------
VENV=/tmp/petcohort-gpu-venv
INSTALL_LOG="$OUT/install.log"
if [ -n "${PY:-}" ]; then  # a caller-given interpreter with everything installed
    echo "using PY=$PY, no install" | tee -a "$SUMMARY"
else
    PY=python3
    if step venv 30 "$INSTALL_LOG" python3 -m venv --system-site-packages "$VENV"; then
        PY="$VENV/bin/python"
    fi
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        step wheels 90 "$INSTALL_LOG" "$PY" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
        step project 60 "$INSTALL_LOG" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
    else
        step project 150 "$INSTALL_LOG" "$PY" -m pip install -q -e '.[gpu,test]'
    fi
fi
step imports 30 "$INSTALL_LOG" "$PY" -c "
import cupy, dask, distributed, zarr, petcohort.engine as e
from petcohort.engine.backend import gpu_available
print('petcohort', e.__version__, 'cupy', cupy.__version__, 'dask', dask.__version__, 'zarr', zarr.__version__)
print('gpu_available', gpu_available())
import dask_cuda; print('dask_cuda', dask_cuda.__version__)"

# -- tests marked gpu ----------------------------------------------------------
# only the files holding gpu tests: others may need packages not installed here
GPU_TESTS=$(grep -rl "mark.gpu" tests --include="test_*.py" | sort)
step pytest_gpu 90 "$OUT/pytest_gpu.log" "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" \
    --continue-on-collection-errors $GPU_TESTS
grep -q " passed" "$OUT/pytest_gpu.log" || echo "pytest_gpu: no gpu test passed (all skipped?)" | tee -a "$SUMMARY"

# -- GPU benchmarks: cupy vs numpy (each prints its rows and writes JSON) -------
BENCH_LOG="$OUT/bench.log"
for b in bench_sulpeak bench_label; do
    step "$b" 50 "$BENCH_LOG" "$PY" "benchmarks/$b.py" --device cuda
done

# -- nnU-Net on the GPU: engine vs nnUNetv2_predict per study -------------------
# torch (CUDA) and nnunetv2 are too large to carry (~5.5 GB); run only when the image has them
if "$PY" -c "import torch, nnunetv2, SimpleITK; assert torch.cuda.is_available()" >>"$BENCH_LOG" 2>&1; then
    step bench_nnunet 150 "$BENCH_LOG" "$PY" benchmarks/bench_nnunet.py --device cuda --patients 2
else
    echo "bench_nnunet skipped: no CUDA torch + nnunetv2 on this image (see bench.log)" | tee -a "$SUMMARY"
fi

# -- a LocalCUDACluster run: one worker per GPU, GPU stages on resources GPU=1 ---
cat >/tmp/petcohort-cuda-cluster.yaml <<'EOF'
kind: local_cuda
dashboard_address: null
EOF
step cuda_cluster 90 "$OUT/cuda_cluster.log" "$PY" - <<'EOF'
import logging, tempfile, time
logging.basicConfig(level=logging.INFO)
logging.getLogger("distributed").setLevel(logging.WARNING)
from petcohort.pipelines.synthetic import synthesize
from petcohort.pipelines.run import run_cohort
from petcohort.storage.store import CohortStore
d = tempfile.mkdtemp()
synthesize(d + "/store", patients=2, sites=1, seed=0, fov_scale=0.6)
t0 = time.perf_counter()
s = run_cohort(d + "/store", cluster_file="/tmp/petcohort-cuda-cluster.yaml")
print("seconds", round(time.perf_counter() - t0, 2), "done", len(s.done), "failed", s.failed)
workers = {r["worker"] for r in CohortStore.open(d + "/store", mode="r").stage_records().values()}
print("workers", sorted(workers))
raise SystemExit(1 if s.failed else 0)
EOF

# -- collect the benchmarks' JSON written during this run --------------------------
"$PY" - "$START" >"$OUT/results.json" 2>>"$SUMMARY" <<'EOF' || echo "results.json failed" >>"$SUMMARY"
import json, sys, pathlib
start = float(sys.argv[1])
res = {p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path("benchmarks/results").glob("*.json"))
       if p.stat().st_mtime >= start}
json.dump(res, sys.stdout, indent=2)
EOF
echo "total seconds=$(( $(date +%s) - START ))" | tee -a "$SUMMARY"
