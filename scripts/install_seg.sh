#!/usr/bin/env bash
# Install the segmentation stack (nnU-Net v2 + a CPU torch + ANTsPy) into an existing venv.
#
#   scripts/install_seg.sh .venv
#
# Idempotent (pinned versions; pip skips what is already installed). Measured on the
# 2-core dev machine: about 2.5 min from a warm pip cache, +1.0 GB in the venv.
#
# Why not `pip install nnunetv2 antspyx`:
# - torch: a plain `pip install torch` (or any package that pulls an unpinned/other torch)
#   brings a multi-GB CUDA build; this machine's index serves the CPU build of 2.13.0.
# - dynamic-network-architectures requires timm, which requires torchvision, which pins
#   another torch (a 5.5 GB CUDA build). timm is only imported by the Primus/EVA
#   architectures (dynamic_network_architectures/architectures/primus.py, dinov2_eva.py,
#   building_blocks/eva.py); nnU-Net's PlainConvUNet/ResEnc 3d_fullres path used here
#   never imports them (petcohort builds the network from the plans and never runs nnU-Net's
#   trainer-class search, which would import the Primus trainer). So nnunetv2,
#   dynamic-network-architectures, batchgenerators(v2) and acvl-utils go in with --no-deps
#   and their runtime requirements are listed explicitly below.
# - antspyx 0.6.3 declares numpy<2.4 and scipy<1.16; installing its dependencies would
#   downgrade the project's numpy/scipy. It is installed with --no-deps; its registration
#   and resampling, which petcohort uses, pass tests/engine/test_registration.py with
#   numpy 2.4 / scipy 1.17 (pip check will report the declared conflict).
# - not installed (not imported on the paths used): graphviz, imagecodecs, yacs (nnunetv2),
#   future, unittest2 (batchgenerators).
set -euo pipefail
VENV="${1:?usage: scripts/install_seg.sh VENV_DIR}"
PY="$VENV/bin/python"
test -x "$PY" || { echo "no python at $PY" >&2; exit 2; }

if "$PY" - <<'PYCHECK' 2>/dev/null; then
import importlib.metadata as md
want = {"torch": "2.13.0", "nnunetv2": "2.8.1", "antspyx": "0.6.3", "dynamic-network-architectures": "0.4.4",
        "batchgeneratorsv2": "0.3.6", "acvl-utils": "0.2.6", "blosc2": "4.14.1", "statsmodels": "0.15.0"}
for name, version in want.items():
    assert md.version(name).split("+")[0] == version, name
import nnunetv2.inference.predict_from_raw_data, ants  # noqa: F401
PYCHECK
  echo "segmentation stack already installed in $VENV"
  exit 0
fi

PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" --no-deps "nnunetv2==2.8.1" "dynamic-network-architectures==0.4.4" "batchgenerators==0.25.5" \
    "batchgeneratorsv2==0.3.6" "acvl-utils==0.2.6" "antspyx==0.6.3"
# runtime requirements of the above (unpinned ones are petcohort's own dependencies or already there)
"${PIP[@]}" "tqdm==4.70.1" "scikit-image==0.26.0" "blosc2==4.14.1" "einops==0.8.2" "seaborn==0.13.2" \
    "tifffile==2026.3.3" "statsmodels==0.15.0" "webcolors==25.10.0" "SimpleITK>=2.2.1" "nibabel" \
    "connected-components-3d" "scikit-learn" "pandas" "matplotlib" "requests" "pyyaml" "pillow" "threadpoolctl"
"$PY" -c "import nnunetv2.inference.predict_from_raw_data, nnunetv2.training.nnUNetTrainer.nnUNetTrainer, ants"
echo "segmentation stack installed in $VENV"
