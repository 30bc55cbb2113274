"""Cohort-store IO on one whole-body study, against numpy.save/numpy.load; codec choice.

Run: ``python benchmarks/bench_store.py`` (about 20-30 s on 2 cores).

1. Codec table: PET (float32 SUV with multiplicative count noise), CT (int16
   HU) and a lesion mask (uint8), 250 x 144 x 144 voxels, written with the
   store's z-slab chunks and each candidate codec; bytes and write/read time.
   The store's codec per dtype is ``storage/_commit.py::compressor`` (report
   ``store_codecs``: the store's codecs vs no compression).
2. ``store_write`` / ``store_read``: ``CohortStore.write_arrays`` and
   ``read_array`` of the three arrays vs ``numpy.save`` / ``numpy.load`` of the
   same arrays, in the same run; bytes on disk of both in ``extra``.
3. ``store_commit``: ``commit_stage`` (staging + move + record) vs
   ``write_arrays`` of the same arrays: the cost of atomicity.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr
from _harness import report, timeit
from zarr.codecs import BloscCodec, ZstdCodec

from petcohort.storage._commit import chunks_for, compressor
from petcohort.storage.store import CohortStore

SHAPE = (250, 144, 144)          # whole body, 4 mm voxels, ~1 m axial field
KEY = "P-0000000000-T0"


def whole_body_study(seed: int = 0) -> dict[str, np.ndarray]:
    """PET (SUV, float32), CT (HU, int16), lesion mask (uint8) of a simple whole-body phantom."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]) - 72.0, np.arange(SHAPE[2]) - 72.0,
                          indexing="ij", sparse=True)
    body = (y / 45.0) ** 2 + (x / 62.0) ** 2 < 1.0
    lungs = ((y / 25.0) ** 2 + ((np.abs(x) - 28) / 18.0) ** 2 < 1.0) & (z > 150) & (z < 200)
    liver = ((y / 28.0) ** 2 + ((x + 25) / 22.0) ** 2 + ((z - 135) / 18.0) ** 2) < 1.0
    brain = ((y / 30.0) ** 2 + (x / 26.0) ** 2 + ((z - 235) / 14.0) ** 2) < 1.0
    bone = ((y - 30) / 8.0) ** 2 + (x / 8.0) ** 2 < 1.0
    lesions = np.zeros(SHAPE, dtype=np.uint8)
    for cz, cy, cx, r in ((170, -5, 35, 5), (135, 5, -20, 4), (90, 20, 10, 6), (60, -10, -30, 3)):
        lesions |= (((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) < r * r).astype(np.uint8)
    suv = np.where(body, 0.9, 0.0)
    suv = np.where(body & lungs, 0.4, suv)
    suv = np.where(liver, 2.2, suv)
    suv = np.where(brain, 7.0, suv)
    suv = np.where(lesions > 0, 9.0, suv)
    # Multiplicative noise (gamma, ~20 % CV) as in reconstructed OSEM images,
    # plus small non-negative scatter in air.
    pet = suv * rng.gamma(25.0, 1 / 25.0, size=SHAPE) + np.abs(rng.normal(0, 0.005, size=SHAPE))
    hu = np.where(body, 40.0, -1000.0)
    hu = np.where(body & lungs, -820.0, hu)
    hu = np.where(bone & body, 700.0, hu)
    ct = hu + np.where(body, rng.normal(0, 12, size=SHAPE), rng.normal(0, 3, size=SHAPE))
    return {"pet": pet.astype(np.float32), "ct": np.round(ct).astype(np.int16), "seg/manual": lesions}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


CODECS = {
    "none": [],
    "zstd-1": [ZstdCodec(level=1)],
    "zstd-3": [ZstdCodec(level=3)],
    "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "blosc-lz4-bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
    "blosc-zstd3-shuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    "blosc-zstd3-bitshuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")],
}


def codec_table(study: dict[str, np.ndarray], work: Path) -> dict[str, dict]:
    """Bytes and best-of-5 write/read seconds per codec and array, and their sums over the study."""
    table = {}
    for label, codecs in CODECS.items():
        row = {"bytes": 0, "write_s": 0.0, "read_s": 0.0, "per_array_ratio": {}, "per_array": {}}
        for name, a in study.items():
            path = work / label / name.replace("/", "_")
            store = zarr.storage.LocalStore(path)

            def write(a=a, store=store, codecs=codecs):
                arr = zarr.create_array(store, shape=a.shape, dtype=a.dtype, overwrite=True,
                                        chunks=chunks_for(a.shape, a.dtype.itemsize), compressors=codecs)
                arr[...] = a

            w = timeit(write, repeat=5, warmup=1)
            r = timeit(lambda store=store: zarr.open_array(store, mode="r")[...], repeat=5)
            nbytes = _dir_bytes(path)
            row["write_s"] += w
            row["read_s"] += r
            row["bytes"] += nbytes
            row["per_array_ratio"][name] = round(a.nbytes / nbytes, 2)
            row["per_array"][name] = {"bytes": nbytes, "write_s": w, "read_s": r}
        table[label] = row
        per = "  ".join(f"{k} {v['bytes'] / 2**20:.2f} MiB w {v['write_s'] * 1e3:.0f} r {v['read_s'] * 1e3:.0f} ms"
                        for k, v in row["per_array"].items())
        sys.stdout.write(f"  codec {label:24s} {row['bytes'] / 2**20:7.2f} MiB  write {row['write_s'] * 1e3:6.0f} ms"
                         f"  read {row['read_s'] * 1e3:6.0f} ms  | {per}\n")
    return table


def _label(codec) -> str:
    """The CODECS label of a BloscCodec from ``compressor``."""
    label = f"blosc-{codec.cname.value}{codec.clevel if codec.cname.value == 'zstd' else ''}-{codec.shuffle.value}"
    assert label in CODECS, f"storage/_commit.py::compressor returns {label}, not in the table: add it"
    return label


def main() -> None:
    study = whole_body_study()
    raw = sum(a.nbytes for a in study.values())
    work = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        table = codec_table(study, work / "codecs")
        # the store's codec per array (floats and the rest, storage/_commit.py::compressor)
        picks = {name: _label(compressor(a.dtype)) for name, a in study.items()}
        chosen = {k: sum(table[picks[name]]["per_array"][name][k] for name in study)
                  for k in ("bytes", "write_s", "read_s")}
        sys.stdout.write(f"  store codecs {picks}: {chosen['bytes'] / 2**20:.2f} MiB, write "
                         f"{chosen['write_s'] * 1e3:.0f} ms, read {chosen['read_s'] * 1e3:.0f} ms\n")
        report("store_codecs", "store codecs per dtype (write+read)", chosen["write_s"] + chosen["read_s"],
               "no compression (write+read)", table["none"]["write_s"] + table["none"]["read_s"],
               {"shape": SHAPE, "raw_bytes": raw, "picks": picks, "chosen": chosen, "table": table})

        store = CohortStore.create(work / "cohort.zarr")
        store.add_study(KEY, {"spacing": [4.0, 4.0, 4.0], "origin": [0.0, 0.0, 0.0]})
        npy = work / "npy"
        npy.mkdir()

        def np_write():
            for name, a in study.items():
                np.save(npy / f"{name.replace('/', '_')}.npy", a)

        def np_read():
            return [np.load(npy / f"{name.replace('/', '_')}.npy") for name in study]

        def st_read():
            return [store.read_array(KEY, name) for name in study]

        t_np_w = timeit(np_write, repeat=3)
        t_st_w = timeit(lambda: store.write_arrays(KEY, study), repeat=3)
        t_np_r = timeit(np_read, repeat=3)
        t_st_r = timeit(st_read, repeat=3)
        for got, want in zip(st_read(), study.values()):
            assert got.dtype == want.dtype and np.array_equal(got, want)
        sizes = {"raw_bytes": raw, "store_bytes": _dir_bytes(work / "cohort.zarr" / "studies"),
                 "npy_bytes": _dir_bytes(npy), "shape": SHAPE}
        report("store_write", "CohortStore.write_arrays", t_st_w, "numpy.save", t_np_w, sizes)
        report("store_read", "CohortStore.read_array", t_st_r, "numpy.load", t_np_r, sizes)

        n = iter(range(100))
        t_commit = timeit(lambda: store.commit_stage(KEY, "bench", arrays=study,
                                                     record={"input_hash": str(next(n))}), repeat=3)
        report("store_commit", "CohortStore.commit_stage", t_commit, "CohortStore.write_arrays", t_st_w, sizes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
