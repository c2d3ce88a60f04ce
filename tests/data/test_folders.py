"""Image/mask folder reader: pairing by stem, mask encodings, channels, split handling, bad input."""

import numpy as np
import pytest
import torch

from mambaseg.data import DataError, MissingDataError, build_dataset, collate_samples
from mambaseg.data.folders import FolderDataset

from _data_helpers import case_image, case_mask, write_png


def _by_case(ds):
    return {ds[i]["meta"]["case_id"]: ds[i] for i in range(len(ds))}


def test_pairs_by_stem_not_by_sorted_order(tmp_path, pair_folder):
    # sorted images: x.png, x0.png ; sorted masks: x0_mask.png, x_mask.png -> sorted order would swap them
    root = pair_folder(tmp_path / "d", [("x", "x_mask.png", 1), ("x0", "x0_mask.png", 4)])
    ds = FolderDataset(root)
    got = _by_case(ds)
    assert set(got) == {"x", "x0"}
    for name, k in (("x", 1), ("x0", 4)):
        s = got[name]
        assert s["image"][:, 0, 0].tolist() == [200 + k] * 3
        assert torch.equal(s["mask"], torch.from_numpy(case_mask(k)).long())


def test_sample_contract(tmp_path, pair_folder):
    root = pair_folder(tmp_path / "d", [("a", "a.png", 0), ("b", "b.png", 2)])
    ds = build_dataset("folder", str(root), split="all")
    s = ds[0]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 8, 10)
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (8, 10)
    assert s["meta"]["case_id"] == "a" and s["meta"]["original_size"] == (8, 10)
    assert ds.num_classes == 2 and ds.in_channels == 3
    batch = collate_samples([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 8, 10) and [m["case_id"] for m in batch["meta"]] == ["a", "b"]
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert next(iter(loader))["mask"].shape == (2, 8, 10)


@pytest.mark.parametrize("scale", [1, 255])
def test_binary_masks_01_and_0255(tmp_path, pair_folder, scale):
    root = pair_folder(tmp_path / "d", [("a", "a.png", 3)], mask_scale=scale)
    assert torch.equal(FolderDataset(root)[0]["mask"], torch.from_numpy(case_mask(3)).long())


def test_palette_mask_gives_indices(tmp_path):
    write_png(tmp_path / "images" / "c.png", case_image(0))
    lab = np.zeros((8, 10), np.uint8)
    lab[1, :3], lab[4, 2:6], lab[7, 9] = 1, 2, 3
    pal = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    write_png(tmp_path / "masks" / "c.png", lab, palette=pal)
    ds = FolderDataset(tmp_path, num_classes=4)
    assert np.array_equal(ds[0]["mask"].numpy(), lab)


def test_class_index_mask_and_values_outside_label_set(tmp_path):
    write_png(tmp_path / "images" / "c.png", case_image(0))
    lab = np.zeros((8, 10), np.uint8)
    lab[0, 0], lab[1, 1], lab[2, 2] = 1, 2, 5
    write_png(tmp_path / "masks" / "c.png", lab)
    with pytest.raises(DataError, match=r"values \[5\].*0\.\.3"):
        FolderDataset(tmp_path, num_classes=4)[0]
    with pytest.raises(DataError, match=r"found values \[0, 1, 2, 5\]"):
        FolderDataset(tmp_path)[0]  # binary by default
    assert FolderDataset(tmp_path, num_classes=6)[0]["mask"][2, 2] == 5


def test_colour_mask_needs_label_map(tmp_path):
    write_png(tmp_path / "images" / "c.png", case_image(0))
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[2, 3] = (255, 0, 0)
    rgb[5, 5] = (0, 255, 0)
    write_png(tmp_path / "masks" / "c.png", rgb)
    with pytest.raises(DataError, match="label_map"):
        FolderDataset(tmp_path)[0]
    ds = FolderDataset(tmp_path, label_map={(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2})
    m = ds[0]["mask"].numpy()
    assert ds.num_classes == 3 and m[2, 3] == 1 and m[5, 5] == 2 and m.sum() == 3
    with pytest.raises(DataError, match=r"\(0, 255, 0\)"):
        FolderDataset(tmp_path, label_map={(0, 0, 0): 0, (255, 0, 0): 1})[0]


def test_value_label_map(tmp_path):
    write_png(tmp_path / "images" / "c.png", case_image(0))
    lab = np.zeros((8, 10), np.uint8)
    lab[0, :2], lab[3, 3] = 128, 255
    write_png(tmp_path / "masks" / "c.png", lab)
    m = FolderDataset(tmp_path, label_map={0: 0, 128: 1, 255: 2})[0]["mask"].numpy()
    assert m[0, 0] == 1 and m[3, 3] == 2 and m.sum() == 4


def test_jpeg_image_and_mask_thresholded(tmp_path):
    img = case_image(1)
    msk = np.zeros((16, 16), np.uint8)
    msk[4:12, 4:12] = 255
    write_png(tmp_path / "images" / "j.jpg", np.zeros((16, 16, 3), np.uint8) + img[0, 0])
    write_png(tmp_path / "masks" / "j.jpg", msk)
    m = FolderDataset(tmp_path)[0]["mask"].numpy()
    assert np.array_equal(m, (msk > 0).astype(np.int64))


def test_grayscale_bmp_tiff_and_channel_override(tmp_path):
    g = case_image(2, rgb=False)
    write_png(tmp_path / "images" / "g.bmp", g)
    write_png(tmp_path / "masks" / "g.png", case_mask(2))
    ds = FolderDataset(tmp_path)
    assert ds.in_channels == 1 and ds[0]["image"].shape == (1, 8, 10)
    assert np.array_equal(ds[0]["image"][0].numpy(), g.astype(np.float32))
    assert FolderDataset(tmp_path, channels=3)[0]["image"].shape == (3, 8, 10)
    t = tmp_path / "t"
    arr16 = (np.arange(80, dtype=np.uint16).reshape(8, 10) * 700)
    write_png(t / "images" / "s.tif", arr16)
    write_png(t / "masks" / "s.tif", case_mask(0))
    s = FolderDataset(t)[0]
    assert s["image"].shape == (1, 8, 10) and float(s["image"].max()) == 79 * 700


def test_split_folders_and_flat_ratio_split(tmp_path, pair_folder):
    pair_folder(tmp_path / "s" / "train", [("a", "a.png", 0), ("b", "b.png", 1)])
    pair_folder(tmp_path / "s" / "val", [("c", "c.png", 2)])
    assert len(FolderDataset(tmp_path / "s", split="train")) == 2
    assert FolderDataset(tmp_path / "s", split="val")[0]["meta"]["case_id"] == "c"
    flat = pair_folder(tmp_path / "f", [(f"i{k}", f"i{k}.png", k) for k in range(10)])
    tr, va = FolderDataset(flat, "train", seed=3), FolderDataset(flat, "val", seed=3)
    ids_tr, ids_va = set(tr.case_ids()), set(va.case_ids())
    assert len(ids_tr) == 8 and len(ids_va) == 2 and not ids_tr & ids_va
    assert len(FolderDataset(flat, "all")) == 10


def test_missing_directory_names_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected layout"):
        FolderDataset(tmp_path / "nope")
    (tmp_path / "x" / "images").mkdir(parents=True)
    with pytest.raises(MissingDataError, match="no masks folder"):
        FolderDataset(tmp_path / "x")


def test_unpaired_files_are_listed(tmp_path, pair_folder):
    root = pair_folder(tmp_path / "d", [("a", "a.png", 0), ("lonely", None, 1)])
    write_png(root / "masks" / "ghost.png", case_mask(0))
    with pytest.raises(DataError) as e:
        FolderDataset(root)
    msg = str(e.value)
    assert "have no mask: lonely.png" in msg and "have no image: ghost.png" in msg
    assert len(FolderDataset(root, strict=False)) == 1


def test_corrupt_file_is_named(tmp_path, pair_folder):
    root = pair_folder(tmp_path / "d", [("a", "a.png", 0)])
    (root / "images" / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"a\.png.*corrupt"):
        FolderDataset(root, channels=3)[0]


def test_size_mismatch(tmp_path):
    write_png(tmp_path / "images" / "a.png", case_image(0))
    write_png(tmp_path / "masks" / "a.png", np.zeros((6, 10), np.uint8))
    with pytest.raises(DataError, match="8x10.*6x10"):
        FolderDataset(tmp_path)[0]
    with pytest.raises(DataError, match="1 problem"):
        FolderDataset(tmp_path).verify()


def test_empty_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no images"):
        FolderDataset(tmp_path)


def test_verify_counts_classes(tmp_path, pair_folder):
    root = pair_folder(tmp_path / "d", [("a", "a.png", 0), ("b", "b.png", 1)])
    rep = FolderDataset(root).verify()
    assert rep["num_samples"] == 2 and rep["class_pixels"][1] == 3 * 1 + 3 * 2
