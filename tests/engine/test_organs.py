"""TotalSegmentator v2 mapping and the CT-HU bone fallback."""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine.errors import InputError
from petcohort.engine.kernels.organs import TOTALSEG_V2_ORGANS, bone_from_ct, totalseg_to_organs


def test_totalseg_class_table_spot_checks():
    bone = TOTALSEG_V2_ORGANS["bone"]
    assert bone[27] == "vertebrae_L5" and bone[31] == "vertebrae_L1" and bone[32] == "vertebrae_T12"
    assert bone[43] == "vertebrae_T1" and bone[44] == "vertebrae_C7" and bone[50] == "vertebrae_C1"
    assert bone[92] == "rib_left_1" and bone[115] == "rib_right_12" and bone[116] == "sternum"
    assert 117 not in bone and 5 not in bone   # costal cartilage, liver
    assert len(bone) == 2 + 24 + 10 + 1 + 24 + 1


def test_totalseg_to_organs():
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, 0] = 5      # liver
    labels[0, 0, 1] = 52     # aorta
    labels[0, 0, 2] = 91     # skull
    labels[0, 0, 3] = 116    # sternum
    labels[1, 0, 0] = 117    # costal cartilage: not bone
    labels[1, 0, 1] = 2      # kidney
    out = totalseg_to_organs(labels)
    assert out["liver"].sum() == 1 and out["liver"][0, 0, 0] == 1
    assert out["aorta"][0, 0, 1] == 1
    assert out["bone"].sum() == 2 and out["bone"][0, 0, 2] and out["bone"][0, 0, 3]
    assert out["kidneys"].sum() == 1 and out["brain"].sum() == 0
    assert all(v.dtype == np.uint8 for v in out.values())
    with pytest.raises(InputError):
        totalseg_to_organs(labels.astype(np.float32))


def test_bone_from_ct():
    ct = np.full((10, 20, 20), -1000, np.int16)          # air
    ct[:, 3:17, 3:17] = 40                                # body (soft tissue)
    ct[:, 8:12, 8:12] = 700                               # spine-like column: 160 voxels
    ct[5, 5, 5] = 400                                     # one-voxel speck: dropped (< 1 mL)
    ct[:, 18:20, 0:20] = 300                              # table, outside the body component
    bone = bone_from_ct(ct, spacing=(2, 2, 2))
    assert bone.dtype == np.uint8
    assert bone[:, 8:12, 8:12].all()
    assert bone.sum() == 160
    assert bone_from_ct(np.full((3, 3, 3), -1000, np.int16), spacing=(2, 2, 2)).sum() == 0
