#!/usr/bin/env bash
# GPU checks for a lent H100/H200 machine. Run from the repo root with $OUT set:
#     OUT=/some/empty/dir bash benchmarks/gpu/run.sh
# Finishes within 8 minutes (each step has its own `timeout`, clipped to what
# is left of the budget); writes at most 8 files under $OUT (the device tool
# returns no more):
#   nvidia-smi.txt  install.log  pytest_gpu.log  bench.log  cohort.log
#   cohort.json (the cohort row)  results.json (the benchmarks' JSON records)
#   summary.txt (one line per step, and what was skipped and why)
#
# Cohort row (the throughput figure): a synthetic cohort of COHORT_PATIENTS
# patients (default 24, about 65 studies; phantoms at COHORT_FOV_SCALE=0.6 of
# adult size), the analysis stages (every stage but nnU-Net's) run twice,
# --force, on this machine: on a LocalCUDACluster (one worker on GPU 0, one
# thread per CPU core, the device stages on the GPU) and on a LocalCluster of
# one single-threaded worker per CPU core with PETCOHORT_STAGE_DEVICE=cpu (the
# numpy path); plus nnU-Net per study on the GPU (bench_nnunet.py, when the
# image has CUDA torch and nnunetv2). The cohort row runs before the
# micro-benchmarks, so a slow install costs those first.
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
step pytest_gpu 60 "$OUT/pytest_gpu.log" "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" \
    --continue-on-collection-errors $GPU_TESTS
grep -q " passed" "$OUT/pytest_gpu.log" || echo "pytest_gpu: no gpu test passed (all skipped?)" | tee -a "$SUMMARY"

BENCH_LOG="$OUT/bench.log"

# -- cohort row: analysis stages on the GPU vs the same on this machine's CPU cores ------
COHORT_DIR=/tmp/petcohort-cohort
COHORT_LOG="$OUT/cohort.log"
NCPU=$(nproc)
rm -rf "$COHORT_DIR" && mkdir -p "$COHORT_DIR"
printf 'kind: local_cuda\ndevices: [0]\nthreads_per_worker: %s\nmemory_limit: null\ndashboard_address: null\n' \
    "$NCPU" >"$COHORT_DIR/gpu.yaml"
printf 'kind: local\nn_workers: %s\nthreads_per_worker: 1\nmemory_limit: null\ndashboard_address: null\n' \
    "$NCPU" >"$COHORT_DIR/cpu.yaml"
cat >"$COHORT_DIR/run_cohort.py" <<'PYEOF'
"""One forced run of the analysis stages over the cohort: wall seconds, study-stages, device per stage."""
import json, logging, sys, time


def main(url, cluster, label, out):
    from petcohort.pipelines.run import run_cohort
    from petcohort.pipelines.stages import MODEL_STAGES, load_stages, stage_order
    from petcohort.storage.store import CohortStore

    load_stages()
    stages = [s for s in stage_order() if s not in MODEL_STAGES]
    t0 = time.perf_counter()
    s = run_cohort(url, stages=stages, cluster_file=cluster, force=True)
    wall = time.perf_counter() - t0
    store = CohortStore.open(url, mode="r")
    devices = {}
    for key in store.study_keys():
        for stage in stages:
            rec = store.stage_record(key, stage)
            if rec is not None:  # summary "device" is "cuda" on the device path, absent on the numpy path
                dev = (rec.get("summary") or {}).get("device", "cpu")
                devices.setdefault(stage, {}).setdefault(dev, 0)
                devices[stage][dev] += 1
    n = len(store.study_keys())
    row = {"label": label, "studies": n, "stages": stages, "wall_s": wall, "wall_s_per_study": wall / n,
           "done": len(s.done), "failed": len(s.failed), "failed_reasons": sorted({r for *_, r in s.failed}),
           "device_by_stage": devices}
    print(json.dumps(row))
    with open(out, "w") as fh:
        json.dump(row, fh)
    return 1 if s.failed else 0


if __name__ == "__main__":  # worker processes are spawned and import this file again
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main(*sys.argv[1:5]))
PYEOF
if step cohort_synth 90 "$COHORT_LOG" "$PY" -c "
from petcohort.pipelines.synthetic import synthesize
r = synthesize('$COHORT_DIR/store', patients=int('${COHORT_PATIENTS:-24}'), sites=1, seed=0,
               fov_scale=float('${COHORT_FOV_SCALE:-0.6}'), mip_dir='$COHORT_DIR/mips')
print({k: v for k, v in r.items() if k != 'mips'})"; then
    if "$PY" -c "import dask_cuda, cupy; assert cupy.cuda.runtime.getDeviceCount() > 0" >>"$COHORT_LOG" 2>&1; then
        step cohort_gpu 120 "$COHORT_LOG" "$PY" "$COHORT_DIR/run_cohort.py" "$COHORT_DIR/store" \
            "$COHORT_DIR/gpu.yaml" "LocalCUDACluster, GPU 0, $NCPU threads" "$COHORT_DIR/gpu.json"
    else
        echo "cohort_gpu skipped: dask_cuda or cupy missing, or no CUDA device (see cohort.log)" | tee -a "$SUMMARY"
    fi
    step cohort_cpu 150 "$COHORT_LOG" env PETCOHORT_STAGE_DEVICE=cpu "$PY" "$COHORT_DIR/run_cohort.py" \
        "$COHORT_DIR/store" "$COHORT_DIR/cpu.yaml" "LocalCluster, $NCPU CPU workers" "$COHORT_DIR/cpu.json"
else
    echo "cohort_gpu, cohort_cpu skipped: the synthetic cohort was not built (see cohort.log)" | tee -a "$SUMMARY"
fi

# -- nnU-Net on the GPU: engine vs nnUNetv2_predict per study -------------------
# torch (CUDA) and nnunetv2 are too large to carry (~5.5 GB); run only when the image has them
if "$PY" -c "import torch, nnunetv2, SimpleITK; assert torch.cuda.is_available()" >>"$BENCH_LOG" 2>&1; then
    step bench_nnunet 120 "$BENCH_LOG" "$PY" benchmarks/bench_nnunet.py --device cuda --patients 2
else
    echo "bench_nnunet skipped: no CUDA torch + nnunetv2 on this image (see bench.log)" | tee -a "$SUMMARY"
fi

# -- the cohort row: GPU vs CPU analysis stages, nnU-Net per study on the GPU (when measured) ----
"$PY" - "$COHORT_DIR" "$START" >"$OUT/cohort.json" 2>>"$SUMMARY" <<'PYEOF' || echo "cohort.json failed" >>"$SUMMARY"
import json, pathlib, sys
d, start = pathlib.Path(sys.argv[1]), float(sys.argv[2])
row = {k: json.loads((d / f"{k}.json").read_text()) if (d / f"{k}.json").exists() else None for k in ("gpu", "cpu")}
nn = pathlib.Path("benchmarks/results/nnunet_cohort_inference.json")
row["nnunet_gpu"] = json.loads(nn.read_text()) if nn.exists() and nn.stat().st_mtime >= start else None
g, c = row["gpu"], row["cpu"]
ok = bool(g and c and g["done"] == c["done"])  # same work on both (a failed registration fails on both)
row["gpu_speedup_vs_cpu_cores"] = c["wall_s"] / g["wall_s"] if ok else None
parts = [f"{g['studies']} studies, analysis stages on the GPU {g['wall_s']:.1f} s" if g else "GPU run missing",
         f"on {c['label']} {c['wall_s']:.1f} s" if c else "CPU run missing"]
if ok:
    parts.append(f"GPU speed-up {row['gpu_speedup_vs_cpu_cores']:.2f}x")
if row["nnunet_gpu"]:
    parts.append(f"nnU-Net on the GPU {row['nnunet_gpu']['extra']['engine_studies_per_min']:.1f} studies/min")
else:
    parts.append("nnU-Net per study on the GPU not measured (see summary)")
print("cohort row: " + "; ".join(parts), file=sys.stderr)
json.dump(row, sys.stdout, indent=2)
PYEOF

# -- GPU micro-benchmarks: cupy vs numpy (each prints its rows and writes JSON) -------
for b in bench_sulpeak bench_label; do
    step "$b" 45 "$BENCH_LOG" "$PY" "benchmarks/$b.py" --device cuda
done

# -- collect the benchmarks' JSON written during this run --------------------------
"$PY" - "$START" >"$OUT/results.json" 2>>"$SUMMARY" <<'EOF' || echo "results.json failed" >>"$SUMMARY"
import json, sys, pathlib
start = float(sys.argv[1])
res = {p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path("benchmarks/results").glob("*.json"))
       if p.stat().st_mtime >= start}
json.dump(res, sys.stdout, indent=2)
EOF
echo "total seconds=$(( $(date +%s) - START ))" | tee -a "$SUMMARY"
