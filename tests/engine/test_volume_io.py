"""A prediction written as NIfTI has the input's affine, header geometry and voxel order (round trip)."""
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from mambaseg.engine.volume_io import label_dtype, write_label_nifti


def _affine():
    c, s = math.cos(0.3), math.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.8, 1.1, 3.5])
    a[:3, 3] = [-90.0, 12.5, 40.0]
    return a


def _reference(tmp_path, shape=(7, 6, 5), channels=None, sform_code=2, qform_code=1):
    data = np.random.default_rng(0).normal(size=shape + ((channels,) if channels else ())).astype(np.float32)
    img = nib.Nifti1Image(data, _affine())
    img.header.set_sform(_affine(), sform_code)
    img.header.set_qform(_affine(), qform_code)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_slope_inter(2.0, 1.0)  # a scaled input must not rescale the labels
    img.header["descrip"] = b"flair"
    p = tmp_path / "case_0000.nii.gz"
    nib.save(img, str(p))
    return p


@pytest.mark.parametrize("channels", [None, 4])
def test_round_trip_keeps_affine_header_and_voxel_order(tmp_path, channels):
    ref = _reference(tmp_path, channels=channels)
    labels = np.zeros((7, 6, 5), np.int64)
    labels[1:3, 2, 4] = 2  # asymmetric, so any transposition or flip would show
    labels[6, 0, 0] = 3
    out = write_label_nifti(torch.as_tensor(labels), tmp_path / "pred" / "case.nii.gz", ref)
    back = nib.load(str(out))
    orig = nib.load(str(ref))
    np.testing.assert_allclose(back.affine, orig.affine, atol=1e-6)
    assert back.header.get_data_dtype() == np.uint8
    assert back.shape == (7, 6, 5)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels)
    assert back.header.get_zooms()[:3] == pytest.approx(orig.header.get_zooms()[:3])
    assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 1
    assert back.header.get_xyzt_units() == ("mm", "sec")
    assert back.header["descrip"].tobytes().rstrip(b"\x00") == b"flair"
    np.testing.assert_allclose(back.header.get_sform(), orig.header.get_sform(), atol=1e-6)
    np.testing.assert_allclose(back.header.get_qform(), orig.header.get_qform(), atol=1e-5)


def test_uint16_for_255_labels_and_errors(tmp_path):
    ref = _reference(tmp_path)
    labels = np.zeros((7, 6, 5), np.int32)
    labels[0, 0, 0] = 300
    out = write_label_nifti(labels, tmp_path / "big.nii.gz", ref)
    assert nib.load(str(out)).header.get_data_dtype() == np.uint16
    assert int(np.asanyarray(nib.load(str(out)).dataobj)[0, 0, 0]) == 300
    assert label_dtype(np.array([254])) == np.uint8 and label_dtype(np.array([255])) == np.uint16
    with pytest.raises(FileExistsError, match="overwrite"):
        write_label_nifti(labels, out, ref)
    with pytest.raises(ValueError, match="differs from the input"):
        write_label_nifti(labels.transpose(2, 1, 0), tmp_path / "t.nii.gz", ref)
    with pytest.raises(ValueError, match="negative"):
        write_label_nifti(labels - 1, tmp_path / "n.nii.gz", ref)
    assert not (tmp_path / "t.nii.gz").exists() and not (tmp_path / "n.nii.gz").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
