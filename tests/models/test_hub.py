"""save_pretrained / from_pretrained: one folder (config.json + model.safetensors) per model, no pickle."""

import json
import pickle

import pytest
import torch

from mambaseg.models import create_model, from_pretrained, list_models, save_pretrained
from mambaseg.models.hub import PretrainedFolderError, pull_from_hub, read_config

from small_models import SIZE, size_for, small_model  # noqa: F401


@pytest.mark.parametrize("name", list_models())
def test_round_trip_every_network(name, tmp_path, monkeypatch):
    SIZE = size_for(name)
    torch.manual_seed(0)
    model = small_model(name, in_channels=1, num_classes=4).eval()
    with torch.no_grad():                                    # non-default weights everywhere (BN stats too)
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.01)
    model.save_pretrained(tmp_path / "m", input_size=SIZE, class_names=["bg", "a", "b", "c"],
                          preprocessing={"preset": "default", "image_size": list(SIZE)})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["architecture"] == name and cfg["in_channels"] == 1 and cfg["out_channels"] == 4
    assert cfg["class_names"] == ["bg", "a", "b", "c"] and cfg["input_size"] == list(SIZE)
    assert cfg["model_args"]["num_classes"] == 4 and "mambaseg_version" in cfg
    # loading must not unpickle anything
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle used"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle used"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load used"))
    loaded = from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        assert torch.equal(a, b), k
    x = torch.randn(1, 1, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_every_factory_argument_is_recorded_and_class_method(tmp_path):
    m = create_model("swin_unet", img_size=64, embed_dim=12, depths=(1, 1, 1, 1))
    save_pretrained(m, tmp_path / "s")
    args = read_config(tmp_path / "s")["model_args"]
    assert args["img_size"] == 64 and args["depths"] == [1, 1, 1, 1] and args["in_channels"] == 3
    assert read_config(tmp_path / "s")["input_size"] == [64, 64]
    assert read_config(tmp_path / "s")["class_names"] == ["background", "class_1"]
    from mambaseg.models.networks.swin_unet import SwinUNet
    from mambaseg.models.networks.unet import UNet
    assert isinstance(SwinUNet.from_pretrained(tmp_path / "s"), SwinUNet)
    with pytest.raises(PretrainedFolderError, match="not a UNet"):
        UNet.from_pretrained(tmp_path / "s")
    with pytest.raises(FileExistsError):
        save_pretrained(m, tmp_path / "s")                  # nothing overwritten
    assert isinstance(pull_from_hub(str(tmp_path / "s")), SwinUNet)   # a local folder needs no hub


def test_bad_folders_give_one_clear_error(tmp_path):
    with pytest.raises(PretrainedFolderError, match="no config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PretrainedFolderError, match="not a mambaseg config"):
        from_pretrained(tmp_path)
    m = create_model("unet", base_channels=4)
    save_pretrained(m, tmp_path / "u")
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    cfg["model_args"]["base_channels"] = 8
    (tmp_path / "u" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainedFolderError, match="cannot load|does not match"):
        from_pretrained(tmp_path / "u")
    with pytest.raises(PretrainedFolderError, match="class_names has 3"):
        save_pretrained(m, tmp_path / "v", class_names=["a", "b", "c"])
    with pytest.raises(PretrainedFolderError, match="create_model"):
        from mambaseg.models.networks.unet import UNet
        save_pretrained(UNet(base_channels=4), tmp_path / "w")


def test_hub_round_trip_through_a_local_folder(tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    m = create_model("unet", base_channels=4)
    save_pretrained(m, tmp_path / "u")
    assert hub is not None and pull_from_hub(str(tmp_path / "u")).model_name == "unet"
