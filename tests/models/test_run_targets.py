"""Where a training run writes (issue 37): never over a checkpoint or a state it was not asked to
replace, and an unwritable target refused at start in one line. Real runs of `models.train`'s
entry point, a step or two on a slice of Fashion-MNIST or on a drawn folder."""

import re
from pathlib import Path

import pytest
from PIL import Image

from models.checkpoint import read_card, save_checkpoint, sha256_file
from models.families.dcgan import DCGAN, DCGANConfig
from models.training import command as train
from models.training.targets import claim

REPO = Path(__file__).resolve().parents[2]
TINY_VAE = ["--limit", "64", "--batch-size", "32", "--quiet", "--threads", "1", "--save-minutes", "100",
            "--set", "latent_dim=4", "width=4", "hidden=16"]


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A working directory laid out as a clone: weights/dcgan and weights/vae hold checkpoints
    that no run of this test wrote (as the shipped ones)."""
    monkeypatch.chdir(tmp_path)
    for name in ("dcgan", "vae"):
        model = DCGAN(DCGANConfig(latent_dim=8, generator_width=4, discriminator_width=4))
        save_checkpoint(model, tmp_path / "weights" / name, {"name": name, "dataset": "fashion-mnist",
                                                             "training": {"epochs": 135, "trained_at": "2026-12-08"}})
    return tmp_path


def shas(root: Path) -> dict[str, str]:
    return {p.parent.name: sha256_file(p) for p in sorted((root / "weights").glob("*/model.safetensors"))}


def draw_folder(root: Path) -> Path:
    for label, colour in (("reds", (200, 30, 30)), ("blues", (30, 30, 200))):
        (root / "images" / label).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (40, 40), tuple(c + 3 * i for c in colour)).save(root / "images" / label / f"{i}.png")
    return root / "images"


def test_a_run_without_out_never_replaces_the_shipped_checkpoint(clone):
    """The issue's command: a one-step folder run that replaced the shipped DCGAN at its first save."""
    before = shas(clone)
    images = draw_folder(clone)
    with pytest.raises(SystemExit, match=r"^error: --out weights/dcgan holds a dcgan checkpoint \(fashion-mnist, 135 "
                                         r"epochs, trained 2026-12-08\), which this run did not write; .*--overwrite"):
        train.main(["dcgan", "--dataset", "folder", "--data-dir", str(images), "--image-size", "32", "--max-steps", "1",
                    "--batch-size", "8", "--cache-dir", str(clone / "cache"), "--quiet", "--threads", "1"])
    assert shas(clone) == before
    assert not (clone / "runs" / "dcgan" / "state.pt").exists()


def test_overwrite_replaces_and_resume_continues_the_runs_own(clone):
    before = shas(clone)
    train.main(["vae", "--max-steps", "1", "--overwrite", *TINY_VAE])  # weights/vae, runs/vae
    card = read_card(clone / "weights" / "vae")
    run = card["training"]["run"]
    assert card["training"]["steps"] == 1 and shas(clone)["vae"] != before["vae"]
    train.main(["vae", "--max-steps", "2", "--resume", *TINY_VAE])  # its own: no --overwrite needed
    card = read_card(clone / "weights" / "vae")
    assert card["training"]["run"] == run and card["training"]["steps"] == 2
    # A new run over it (without --resume) is another run: refused, its checkpoint and state kept.
    kept = shas(clone)["vae"], (clone / "runs" / "vae" / "state.pt").read_bytes()
    with pytest.raises(SystemExit, match="^error: --out weights/vae holds a vae checkpoint .*which this run did not"):
        train.main(["vae", "--max-steps", "1", *TINY_VAE])
    with pytest.raises(SystemExit, match="^error: --state-dir runs/vae holds another run's training state"):
        train.main(["vae", "--max-steps", "1", "--out", "weights/vae-2", "--state-dir", "runs/vae", *TINY_VAE])
    assert (shas(clone)["vae"], (clone / "runs" / "vae" / "state.pt").read_bytes()) == kept
    assert not (clone / "weights" / "vae-2").exists()


def test_init_from_the_out_folder_continues_that_checkpoint_in_place(clone, tmp_path):
    train.main(["vae", "--max-steps", "1", "--out", "mine/vae", *TINY_VAE])
    train.main(["vae", "--max-steps", "2", "--out", "mine/vae", "--state-dir", "runs/again", "--init-from", "mine/vae",
                *TINY_VAE])
    assert read_card(tmp_path / "mine" / "vae")["training"]["steps"] == 2


def test_make_train_all_replaces_and_then_resumes_the_weights_it_reproduces(clone):
    """The Makefile's train-all flags, on a clone whose weights no run wrote: the first run replaces
    them, a second (after an interruption, say) resumes its own."""
    recipe = re.search(r"models\.train \$\$m ([^|;]*)", (REPO / "Makefile").read_text())
    flags = recipe.group(1).split()
    train.main(["vae", *flags, "--max-steps", "1", *TINY_VAE])
    train.main(["vae", *flags, "--max-steps", "2", *TINY_VAE])
    assert read_card(clone / "weights" / "vae")["training"]["steps"] == 2


def test_a_state_of_another_kind_of_run_is_one_line_on_resume(clone):
    train.main(["vae", "--max-steps", "1", "--out", "weights/a", "--state-dir", "runs/shared", *TINY_VAE])
    wider = [*TINY_VAE[:-3], "latent_dim=6", "width=4", "hidden=16"]
    with pytest.raises(SystemExit, match=r"^error: --state-dir runs/shared holds the state of a run that does not fit "
                                         r"this one \(Error\(s\) in loading state_dict for VAE: size mismatch for "
                                         r".*\); resume it with"):
        train.main(["vae", "--max-steps", "2", "--out", "weights/b", "--state-dir", "runs/shared", "--resume", *wider])


@pytest.mark.parametrize("flag", ["--out", "--state-dir"])
def test_an_unwritable_target_is_refused_at_start_in_one_line(clone, flag, monkeypatch):
    (clone / "a-file").write_text("not a folder")
    monkeypatch.setattr(train, "load_dataset", lambda *a, **k: pytest.fail("the data was read before the refusal"))
    with pytest.raises(SystemExit, match=rf"^error: {flag} a-file(/x)?: cannot write there \(Not a directory\)$"):
        train.main(["vae", flag, "a-file/x/y" if flag == "--out" else "a-file/x", *TINY_VAE])


def test_a_checkpoint_written_by_another_run_meanwhile_is_not_replaced(clone):
    """Two runs given the same --out: the second to save finds the first's checkpoint and stops."""
    class Args:
        out, state_dir, init_from, overwrite = Path("weights/new"), Path("runs/new"), None, False
    target = claim(Args, None)
    target.check()  # nothing there yet: free to write
    save_checkpoint(DCGAN(DCGANConfig(latent_dim=8, generator_width=4, discriminator_width=4)), "weights/new",
                    {"name": "new"})
    with pytest.raises(SystemExit, match="^error: --out weights/new now holds a dcgan checkpoint .*written by another"):
        target.check()
