import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.checkpoint import CheckpointError, load_checkpoint, read_card, save_checkpoint, update_card
from models.dcgan import DCGAN, DCGANConfig
from models.pixelcnn import PixelCNN, PixelCNNConfig
from models.vae import VAE, VAEConfig

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
    from models.checkpoint import sha256_file
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
