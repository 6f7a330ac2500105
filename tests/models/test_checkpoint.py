import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.card import UNDECLARED_BOUNDS, CardError, check_config
from models.checkpoint import (CheckpointError, build_model, load_checkpoint, read_card, save_checkpoint, sha256_file,
                               update_card)
from models.families.dcgan import DCGAN, DCGANConfig
from models.families import FAMILIES
from models.families.pixelcnn import PixelCNN, PixelCNNConfig
from models.families.vae import VAE, VAEConfig

SMALL = [
    PixelCNN(PixelCNNConfig(channels=8, n_layers=2, head_channels=8, n_classes=10)),
    VAE(VAEConfig(latent_dim=4, width=4, hidden=16)),
    DCGAN(DCGANConfig(latent_dim=8, generator_width=4, discriminator_width=4)),
]


@pytest.fixture(params=SMALL, ids=lambda m: m.family)
def saved(request, tmp_path):
    model = request.param.eval()
    card = save_checkpoint(model, tmp_path / "ckpt", {"name": "ckpt", "dataset": "fashion-mnist"})
    return model, tmp_path / "ckpt", card


def test_round_trip_gives_the_same_outputs(saved):
    model, path, card = saved
    loaded, loaded_card = load_checkpoint(path)
    assert loaded_card["sha256"] == card["sha256"] and len(card["sha256"]) == 64
    assert loaded_card["family"] == model.family and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    if model.family == "pixelcnn":
        x = torch.rand(1, 1, 28, 28)
        assert torch.equal(model(x, torch.tensor([3])), loaded(x, torch.tensor([3])))
    else:
        z = torch.randn(2, model.latent_dim)
        assert torch.equal(model.decode(z), loaded.decode(z))


def test_a_tampered_weights_file_is_refused(saved):
    _, path, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the card"):
        load_checkpoint(path)


def test_a_pickle_beside_the_weights_is_refused(saved):
    _, path, _ = saved
    torch.save({"x": 1}, path / "extra.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


def test_unknown_tensor_names_or_shapes_are_refused(saved):
    model, path, card = saved
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        metadata = f.metadata()  # kept, so that only the tensors are wrong
    first = next(iter(tensors))
    for mutate, message in [(lambda t: t.update(evil=torch.zeros(1)), "unexpected"),
                            (lambda t: t.update({first: torch.zeros(3, 3)}), "expected")]:
        changed = dict(tensors)
        mutate(changed)
        save_file(changed, str(path / "model.safetensors"), metadata=metadata)
        update_card(path, sha256=sha256_file(path / "model.safetensors"))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)


def test_a_bad_card_is_refused(tmp_path, saved):
    _, path, card = saved
    (path / "card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    (path / "card.json").write_text(json.dumps({**card, "family": "stylegan"}))
    with pytest.raises(CheckpointError, match="unknown model family"):
        load_checkpoint(path)
    (path / "card.json").write_text(json.dumps({**card, "config": {**card["config"], "evil": 1}}))
    with pytest.raises(CheckpointError, match="unknown fields"):
        load_checkpoint(path)


def test_update_card_merges_metrics(saved):
    _, path, _ = saved
    update_card(path, metrics={"a": 1})
    update_card(path, metrics={"b": 2})
    assert read_card(path)["metrics"] == {"a": 1, "b": 2}
    load_checkpoint(path)  # the card changed, the weights did not: still loads


def test_the_config_is_covered_by_the_sha256(saved):
    """Issue 14's probe: image_shape edited to [1, 512, 512], sha256 left alone, once loaded and served."""
    _, path, card = saved
    for shape in ([1, 512, 512], [1, 32, 32]):  # out of bounds, and within them but not what was saved
        (path / "card.json").write_text(json.dumps({**card, "config": {**card["config"], "image_shape": shape}}))
        with pytest.raises(CheckpointError, match="outside|not \\[C, H, W\\]|not the one its weights were saved"):
            load_checkpoint(path)


@pytest.mark.parametrize("field, value", [("dataset", 5), ("classes", "Bag"), ("classes", [1, 2]),
                                          ("metrics", [1]), ("training", {"epochs": "ten"}), ("sha256", None),
                                          ("class_latents", {"Bag": {"mean": "x"}})])
def test_a_card_field_of_the_wrong_type_is_refused(saved, field, value):
    _, path, card = saved
    (path / "card.json").write_text(json.dumps({**card, field: value}))
    with pytest.raises(CheckpointError, match=f"malformed .*{field}"):
        load_checkpoint(path)


def test_non_finite_numbers_in_a_card_are_refused(saved):
    _, path, card = saved
    (path / "card.json").write_text(json.dumps({**card, "metrics": {"fid": float("nan")}}))
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(path)


def test_tensor_shapes_are_checked_from_the_header_before_anything_is_allocated(saved, monkeypatch):
    """A tensor declared huge in the header is refused by the header check; load_file, which would
    allocate it, is never called."""
    import models.checkpoint as checkpoint
    model, path, card = saved
    first = next(iter(model.state_dict()))
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    tensors[first] = torch.zeros(7)
    save_file(tensors, str(path / "model.safetensors"), metadata=metadata)
    update_card(path, sha256=sha256_file(path / "model.safetensors"))
    monkeypatch.setattr(checkpoint, "load_file", lambda *a, **k: pytest.fail("tensors loaded before the check"))
    with pytest.raises(CheckpointError, match=f"tensor {first} is \\(7,\\)"):
        load_checkpoint(path)


def test_migration_moves_a_first_format_checkpoint_and_keeps_its_tensors_and_card(saved):
    from models.checkpoint import migrate_checkpoint
    model, path, card = saved
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"family": model.family})  # the first format
    update_card(path, sha256=sha256_file(path / "model.safetensors"), metrics={"kept": 1})
    with pytest.raises(CheckpointError, match="not the one its weights were saved"):
        load_checkpoint(path)
    assert migrate_checkpoint(path) is True and migrate_checkpoint(path) is False
    loaded, loaded_card = load_checkpoint(path)
    assert loaded_card["metrics"] == {"kept": 1} and loaded_card["config"] == card["config"]
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in tensors.items())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_card_is_held_to_the_bounds_its_family_declares(name):
    """Each numeric config field declares its bounds in the dataclass's metadata; a card's config is
    allowed the bounds themselves and refused one past either, naming the field."""
    config_class = FAMILIES[name].Config
    defaults = dataclasses.asdict(config_class())
    numeric = [f for f in dataclasses.fields(config_class)
               if f.name != "image_shape" and type(f.default) in (int, float)]
    assert numeric and all("bounds" in f.metadata for f in numeric)
    for field in numeric:
        low, high = field.metadata["bounds"]
        for allowed in (low, high):
            check_config(name, config_class, {field.name: allowed})
        for refused in (low - 1, high + 1):
            with pytest.raises(CheckpointError, match=f"{field.name}={refused} is outside \\[{low}, {high}\\]"):
                build_model(name, {**defaults, field.name: refused}, "meta")


def test_a_numeric_config_field_without_declared_bounds_is_still_capped():
    @dataclasses.dataclass
    class Undeclared:
        width: int = 8

    high = UNDECLARED_BOUNDS[1]
    check_config("undeclared", Undeclared, {"width": high})
    with pytest.raises(CardError, match=f"width={high + 1} is outside"):
        check_config("undeclared", Undeclared, {"width": high + 1})
