"""GPU (cupy) paths equal the CPU paths: SULpeak RawKernel, labelling, quantify."""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine import backend

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not backend.gpu_available(), reason="needs cupy and a CUDA device")]


def _case(seed=0, shape=(40, 36, 30)):
    rng = np.random.default_rng(seed)
    image = (rng.random(shape) * 8).astype(np.float32)
    mask = (rng.random(shape) < 0.03).astype(np.uint8)
    mask[0, :5, :5] = 1                     # touching the border
    mask[-3:, -4:, -2:] = 1
    return image, mask


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (3.27, 4.07, 4.07), (5.0, 1.1, 0.9)])
def test_sulpeak_gpu_equals_cpu(spacing):
    from petcohort.engine.kernels.label import label
    from petcohort.engine.kernels.sulpeak import lesion_peaks, peak

    image, mask = _case()
    cpu = peak(image, mask, spacing=spacing)
    gpu = peak(backend.to_device(image, "cuda"), backend.to_device(mask, "cuda"), spacing=spacing)
    assert gpu.global_peak == pytest.approx(cpu.global_peak, rel=1e-5)
    assert gpu.local_peak == pytest.approx(cpu.local_peak, rel=1e-5)
    assert gpu.kernel_voxels == cpu.kernel_voxels
    labels, n = label(mask, connectivity=26)
    cpu_l = lesion_peaks(image, labels, n, spacing=spacing)
    gpu_l = lesion_peaks(backend.to_device(image, "cuda"), backend.to_device(labels, "cuda"), n, spacing=spacing)
    assert len(gpu_l) == n
    for c, g in zip(cpu_l, gpu_l):
        assert g.global_peak == pytest.approx(c.global_peak, rel=1e-5)
        assert g.local_peak == pytest.approx(c.local_peak, rel=1e-5)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_label_gpu_same_partition(connectivity):
    from petcohort.engine.kernels.label import label

    _, mask = _case(1)
    cpu, n = label(mask, connectivity=connectivity)
    gpu, ng = label(backend.to_device(mask, "cuda"), connectivity=connectivity)
    gpu = backend.to_numpy(gpu)
    assert ng == n
    fg = mask != 0
    assert len(set(zip(cpu[fg].tolist(), gpu[fg].tolist()))) == n


def test_quantify_gpu_equals_cpu():
    from petcohort.engine.kernels.lesions import quantify

    image, mask = _case(2)
    cpu = quantify(image, mask, spacing=(3.0, 4.0, 4.0), sul_per_suvbw=0.8).study
    gpu = quantify(backend.to_device(image, "cuda"), backend.to_device(mask, "cuda"),
                   spacing=(3.0, 4.0, 4.0), sul_per_suvbw=0.8).study
    for key in ("lesion_count", "mtv_ml", "tlg", "suvmax", "suvmean", "sulpeak", "suvpeak", "local_peak"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-5), key
