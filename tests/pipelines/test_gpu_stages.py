"""Stages ``quantify``, ``organs`` and ``threshold`` on a GPU worker: device results equal the CPU path; device OOM -> CPU.

The ``gpu``-marked tests compare the device path with the numpy path (peaks
within 1e-5 relative, lesions equal up to renumbering) and skip without cupy
and a CUDA device. The fallback tests run everywhere: a fake device whose
transfer raises an out-of-memory error stands in for a full GPU.
"""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine import backend
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stage_organs import organs_stage
from petcohort.pipelines.stage_quantify import quantify_stage
from petcohort.pipelines.stages import StageContext

def _store(name: str):
    """One study: PET with three lesions (one touching the border), manual mask, liver/bone, a TotalSegmentator map."""
    from petcohort.storage.store import CohortStore

    shape = (34, 28, 30)
    rng = np.random.default_rng(5)
    pet = (1.0 + 0.2 * rng.random(shape)).astype(np.float32)
    pet[4:8, 4:7, 4:9] += 6.0
    pet[15:18, 12:16, 2:5] += 3.5
    pet[0:3, 20:24, 25:30] += 4.2                  # at the border: SULpeak sphere partly outside
    manual = (pet > 3.0).astype(np.uint8)
    totalseg = np.zeros(shape, np.uint8)
    totalseg[10:30, 3:20, 15:28] = 5               # liver
    totalseg[:, 12:15, 12:15] = 30                 # a lumbar vertebra
    totalseg[30:34, 5:15, 5:15] = 90               # brain
    store = CohortStore.create(f"memory://{name}")
    key = "P-00000000cc-T0"
    store.add_study(key, {"spacing": [3.0, 4.0, 4.0], "origin": [-50.0, 10.0, 0.0], "timepoint": 0,
                          "sul_per_suvbw": 0.75, "sul_reason": None})
    store.write_arrays(key, {"pet": pet, "seg/manual": manual, "organs/totalseg": totalseg,
                             "organs/liver": (totalseg == 5).astype(np.uint8),
                             "organs/bone": (totalseg == 30).astype(np.uint8)})
    return store, key


def _ctx(store, key) -> StageContext:
    return StageContext(store=store, key=key, attrs=store.study_attrs(key), config=RunConfig())


def _by_position(rows):
    """Lesion rows keyed by voxel count and centroid (the label numbers may differ between devices)."""
    return {(r["voxels"], tuple(round(c, 6) for c in r["centroid_mm"])): r for r in rows}


def _assert_quantify_equal(cpu: dict, dev: dict) -> None:
    assert set(dev["sources"]) == set(cpu["sources"])
    for src, study in cpu["sources"].items():
        for k, v in study.items():
            if isinstance(v, float):
                assert dev["sources"][src][k] == pytest.approx(v, rel=1e-5), (src, k)
            else:
                assert dev["sources"][src][k] == v, (src, k)
        a, b = _by_position(cpu["lesions"][src]), _by_position(dev["lesions"][src])
        assert a.keys() == b.keys()
        for pos, row in a.items():
            for k in ("suvmax", "suvmean", "suvpeak", "sulpeak", "local_peak", "tlg", "mtv_ml"):
                assert b[pos][k] == pytest.approx(row[k], rel=1e-5), (src, pos, k)
            assert b[pos]["organ"] == row["organ"]


def test_cpu_worker_summary_has_no_device(monkeypatch):
    monkeypatch.setattr(backend, "stage_device", lambda: "cpu")
    store, key = _store("gpu-stages-cpu")
    out = quantify_stage(_ctx(store, key))
    assert "device" not in out.summary and "device_fallback" not in out.summary
    assert out.summary["sources"]["manual"]["lesion_count"] == 3
    assert "device" not in organs_stage(_ctx(store, key)).summary


def _oom(*_args, **_kwargs):
    class OutOfMemoryError(MemoryError):  # the name cupy.cuda.memory uses
        pass

    raise OutOfMemoryError("Out of memory allocating 1,048,576 bytes")


def test_device_out_of_memory_falls_back_to_cpu(monkeypatch):
    store, key = _store("gpu-stages-oom")
    monkeypatch.setattr(backend, "stage_device", lambda: "cpu")
    cpu_q, cpu_o = quantify_stage(_ctx(store, key)).summary, organs_stage(_ctx(store, key))
    monkeypatch.setattr(backend, "stage_device", lambda: "cuda")
    monkeypatch.setattr(backend, "to_device", _oom)
    q = quantify_stage(_ctx(store, key)).summary
    assert q["device"] == "cpu" and q["device_fallback"] == "GPU_OUT_OF_MEMORY"
    assert {k: v for k, v in q.items() if not k.startswith("device")} == cpu_q     # the CPU result, exactly
    o = organs_stage(_ctx(store, key))
    assert o.summary["device_fallback"] == "GPU_OUT_OF_MEMORY"
    assert {k: v for k, v in o.summary.items() if not k.startswith("device")} == cpu_o.summary
    assert o.arrays.keys() == cpu_o.arrays.keys()
    assert all(np.array_equal(o.arrays[k], cpu_o.arrays[k]) for k in o.arrays)


def test_other_device_errors_are_not_retried():
    def broken(device):
        raise ValueError(f"kernel bug on {device}")

    with pytest.raises(ValueError, match="cuda"):
        backend.run_on_device(broken, "cuda")
    assert backend.run_on_device(lambda d: d, "cpu") == ("cpu", {})
    assert backend.is_out_of_memory(RuntimeError("cudaErrorMemoryAllocation: out of memory"))
    assert not backend.is_out_of_memory(RuntimeError("cudaErrorIllegalAddress"))


def test_stage_device_env(monkeypatch):
    monkeypatch.setenv(backend.DEVICE_ENV, "cpu")
    assert backend.stage_device() == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="needs cupy and a CUDA device")
def test_quantify_gpu_equals_cpu(monkeypatch):
    store, key = _store("gpu-stages-q")
    monkeypatch.setattr(backend, "stage_device", lambda: "cpu")
    cpu = quantify_stage(_ctx(store, key)).summary
    monkeypatch.setattr(backend, "stage_device", lambda: "cuda")
    dev = quantify_stage(_ctx(store, key)).summary
    assert dev["device"] == "cuda" and "device_fallback" not in dev
    _assert_quantify_equal(cpu, dev)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="needs cupy and a CUDA device")
def test_organs_gpu_equals_cpu(monkeypatch):
    store, key = _store("gpu-stages-o")             # brain comes from the TotalSegmentator map
    monkeypatch.setattr(backend, "stage_device", lambda: "cpu")
    cpu = organs_stage(_ctx(store, key))
    monkeypatch.setattr(backend, "stage_device", lambda: "cuda")
    dev = organs_stage(_ctx(store, key))
    assert dev.summary["device"] == "cuda"
    assert {k: v for k, v in dev.summary.items() if k != "device"} == cpu.summary
    assert dev.arrays.keys() == cpu.arrays.keys() and dev.arrays
    for name, mask in cpu.arrays.items():
        assert isinstance(dev.arrays[name], np.ndarray) and np.array_equal(dev.arrays[name], mask)


def _threshold(store, key):
    from petcohort.pipelines.stage_threshold import threshold_stage

    return threshold_stage(_ctx(store, key))


def test_threshold_falls_back_to_cpu_after_a_device_out_of_memory(monkeypatch):
    store, key = _store("gpu-stages-thr-oom")
    monkeypatch.setattr(backend, "stage_device", lambda: "cpu")
    cpu = _threshold(store, key)
    assert "device" not in cpu.summary and cpu.arrays["seg/threshold_suv25"].any()
    monkeypatch.setattr(backend, "stage_device", lambda: "cuda")
    monkeypatch.setattr(backend, "to_device", _oom)
    dev = _threshold(store, key)
    assert dev.summary["device"] == "cpu" and dev.summary["device_fallback"] == "GPU_OUT_OF_MEMORY"
    assert {k: v for k, v in dev.summary.items() if not k.startswith("device")} == cpu.summary
    assert dev.arrays.keys() == cpu.arrays.keys()
    assert all(np.array_equal(dev.arrays[k], cpu.arrays[k]) for k in cpu.arrays)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="needs cupy and a CUDA device")
def test_threshold_gpu_equals_cpu(monkeypatch):
    store, key = _store("gpu-stages-thr")
    monkeypatch.setattr(backend, "stage_device", lambda: "cpu")
    cpu = _threshold(store, key)
    monkeypatch.setattr(backend, "stage_device", lambda: "cuda")
    dev = _threshold(store, key)
    assert dev.summary["device"] == "cuda"
    assert {k: v for k, v in dev.summary.items() if k != "device"} == cpu.summary
    assert dev.arrays.keys() == cpu.arrays.keys() and len(cpu.arrays) == 3
    for name, mask in cpu.arrays.items():
        assert isinstance(dev.arrays[name], np.ndarray) and np.array_equal(dev.arrays[name], mask), name
