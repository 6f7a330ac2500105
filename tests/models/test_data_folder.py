"""The image-folder dataset (models/folder.py) on small folders drawn here with Pillow."""

import json
import os
import random
import shutil
import socket
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from models.evaluation import evaluate
from models.data import folder
from models.training import command as train
from models.checkpoint import load_checkpoint, read_card
from models.data import DatasetError, load_dataset

CLASSES = ["circles", "squares"]
PER_CLASS = 20
SIZES = [(80, 64), (64, 64), (66, 180), (100, 70)]


def drawing(index: int, size: tuple[int, int]) -> np.ndarray:
    """A colourful RGB picture, different for every index."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def save(path, index: int) -> None:
    """One image in the format its index picks: RGBA PNG, palette GIF, JPEG, WebP, BMP, LA PNG."""
    rgb = Image.fromarray(drawing(index, SIZES[index % len(SIZES)]))
    kind = index % 6
    if kind == 0:
        rgb.putalpha(128)
        rgb.save(path.with_suffix(".png"))
    elif kind == 1:
        rgb.quantize(16).save(path.with_suffix(".gif"))
    elif kind == 2:
        rgb.save(path.with_suffix(".jpg"), quality=90)
    elif kind == 3:
        rgb.save(path.with_suffix(".webp"))
    elif kind == 4:
        rgb.save(path.with_suffix(".bmp"))
    else:
        rgb.convert("LA").save(path.with_suffix(".png"))


def declared_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def make_folder(root, classes=CLASSES, per_class=PER_CLASS):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            save(root / name / f"pic{i:03d}", c * 1000 + i)  # names that put 4 of the 40 in the test split
    return root


@pytest.fixture
def images(tmp_path):
    return make_folder(tmp_path / "images")


def load(directory, split="train", size=28, cache=None, **options):
    return load_dataset("folder", split, directory, image_size=size, cache_dir=cache or directory.parent / "cache",
                        **options)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_a_folder_of_classes_loads_as_uint8_images_and_labels(images, size):
    train_set, test_set = load(images, "train", size), load(images, "test", size)
    assert train_set.classes == CLASSES and test_set.classes == CLASSES
    assert len(train_set) + len(test_set) == 2 * PER_CLASS and len(test_set) >= 1
    assert train_set.images.shape == (len(train_set), 3, size, size) and train_set.images.dtype == torch.uint8
    assert train_set.labels.dtype == torch.int64 and set(train_set.labels.tolist()) == {0, 1}
    for split in (train_set, test_set):
        assert [CLASSES[label] for label in split.labels] == [f.split("/")[0] for f in split.files]
    assert len(load(images, "train", size, limit=5)) == 5


def test_each_mode_decodes_upright_on_white_and_centre_cropped(tmp_path):
    transparent = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    transparent.save(tmp_path / "transparent.png")
    frames = [Image.new("RGB", (30, 30), colour).quantize(4) for colour in ((0, 0, 255), (255, 0, 0))]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.full((30, 30), 32768, np.uint16)).save(tmp_path / "sixteen.png")
    Image.new("CMYK", (30, 30), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    tall = np.zeros((90, 30, 3), np.uint8)
    tall[20:70] = (0, 255, 0)  # the middle, where the crop (rows 30 to 60) and Lanczos's reach lie
    Image.fromarray(tall).save(tmp_path / "tall.png")

    def decoded(name):
        return folder.decode_image(tmp_path / name, 16).astype(int)

    assert (decoded("transparent.png") == 255).all()
    assert (decoded("animated.gif") == (0, 0, 255)).all(), "the first frame"
    assert (abs(decoded("sixteen.png") - 128) <= 1).all()
    assert (decoded("cmyk.jpg") >= 250).all()
    assert (abs(decoded("tall.png") - (0, 255, 0)) <= 2).all()
    assert decoded("tall.png").shape == (16, 16, 3)


def test_channels_default_to_gray_unless_an_image_has_colour(tmp_path):
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(30):
        picture = Image.fromarray(drawing(i, (32, 32))[:, :, 0])
        if i % 3 == 0:
            picture.save(gray / f"{i}.png")
        elif i % 3 == 1:
            picture.save(gray / f"{i}.jpg")
        else:
            picture.convert("RGB").save(gray / f"{i}.png")  # colour mode, gray content
    loaded = load(gray)
    assert loaded.images.shape[1] == 1 and loaded.classes == [] and set(loaded.labels.tolist()) == {0}
    assert load(gray, channels=3).images.shape[1] == 3
    Image.fromarray(drawing(99, (32, 32))).save(gray / "colour.png")
    assert load(gray).images.shape[1] == 3
    assert load(gray, channels=1).images.shape[1] == 1


def test_the_split_never_moves(images, tmp_path):
    before = {split: load(images, split).files for split in ("train", "test")}
    copy = shutil.copytree(images, tmp_path / "elsewhere" / "copy")
    assert {split: load(copy, split).files for split in ("train", "test")} == before, "the same files, the same split"
    for i in range(40):
        save(images / "circles" / f"new{i}", 5000 + i)
    after = {split: load(images, split).files for split in ("train", "test")}
    for split in ("train", "test"):
        assert set(before[split]) < set(after[split])
        assert all(folder.is_held_out(f) == (split == "test") for f in after[split])


def test_images_are_decoded_once_into_the_cache(images, tmp_path, monkeypatch):
    calls = []
    decode = folder.decode_image
    monkeypatch.setattr(folder, "decode_image", lambda path, size: calls.append(path) or decode(path, size))
    cache = tmp_path / "cache"
    first = load(images, "train", cache=cache)
    load(images, "test", cache=cache)
    assert len(calls) == 2 * PER_CLASS and len(list(cache.glob("*.npy"))) == 1
    again = load(images, "train", cache=cache)
    assert len(calls) == 2 * PER_CLASS, "read back, not decoded"
    assert torch.equal(first.images, again.images) and first.files == again.files
    load(images, "train", size=32, cache=cache)
    assert len(calls) == 4 * PER_CLASS, "another size is another cache entry"
    (images / "circles" / "pic000.png").write_bytes((images / "circles" / "pic006.png").read_bytes())
    load(images, "train", cache=cache)
    assert len(calls) == 6 * PER_CLASS, "a changed file is decoded afresh"


def test_unlabelled_data_trains_and_a_model_that_needs_classes_is_told_why(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(40):
        save(flat / f"{i:03d}", i)
    common = ["--dataset", "folder", "--data-dir", str(flat), "--image-size", "28", "--max-steps", "1",
              "--batch-size", "8", "--quiet", "--threads", "1", "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit, match=r'error: pixelcnn takes its classes from the data.*--set n_classes=0'):
        train.main(["pixelcnn", *common, "--out", str(tmp_path / "p"), "--state-dir", str(tmp_path / "runs" / "p")])
    train.main(["vae", *common, "--set", "latent_dim=4", "width=8", "hidden=32", "--out", str(tmp_path / "vae"),
                "--state-dir", str(tmp_path / "runs" / "vae")])
    card = read_card(tmp_path / "vae")
    assert card["classes"] == [] and card["image_shape"] == [3, 28, 28]


# -- bad input: one clear error each, or a file skipped and counted ------------------------------

def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        load(tmp_path / "nowhere")


def test_an_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    with pytest.raises(DatasetError, match="holds no image files"):
        load(tmp_path / "empty")


def test_a_folder_without_a_readable_image_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    for i in range(3):
        (tmp_path / "broken" / f"{i}.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="none of the 3 image files .* could be read"):
        load(tmp_path / "broken")


def test_images_smaller_than_the_size_are_one_clear_error(images):
    Image.new("RGB", (20, 100)).save(images / "circles" / "thin.png")
    Image.new("RGB", (40, 24)).save(images / "squares" / "short.png")
    with pytest.raises(DatasetError, match=r"2 of the 42 images .* smaller than 28 px .*circles/thin.png, 20x100"):
        load(images)


def test_images_beside_class_folders_are_a_clear_error(images):
    Image.new("RGB", (40, 40)).save(images / "loose.png")
    with pytest.raises(DatasetError, match="both at its top"):
        load(images)


def test_unreadable_files_and_bombs_are_skipped_and_counted(images, capsys):
    (images / "circles" / "truncated.jpg").write_bytes((images / "circles" / "pic002.jpg").read_bytes()[:200])
    (images / "squares" / "bomb.png").write_bytes(declared_png(50_000, 50_000))  # past Pillow's own limit
    (images / "squares" / "photo.png").write_bytes(declared_png(9_000, 8_000))  # past the loader's MAX_PIXELS
    loaded = load(images, "train"), load(images, "test")
    assert not any(f.endswith(("truncated.jpg", "bomb.png", "photo.png")) for split in loaded for f in split.files)
    assert sum(len(split) for split in loaded) == 2 * PER_CLASS
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"images skipped"' in line]
    assert len(logged) == 1, "once, when decoding"
    assert logged[0]["unreadable"] == 1 and logged[0]["refused"] == 2 and len(logged[0]["examples"]) == 3


def test_a_bad_folder_is_a_one_line_error_from_the_cli(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .*nowhere: no such folder$"):
        train.main(["dcgan", "--dataset", "folder", "--data-dir", str(tmp_path / "nowhere"), "--image-size", "28"])
    with pytest.raises(SystemExit, match="needs --data-dir DIR and --image-size N"):
        train.main(["dcgan", "--dataset", "folder", "--data-dir", str(tmp_path)])


# -- the command line, end to end -----------------------------------------------------------------

def folder_run(family, images, tmp_path, *extra):
    out = tmp_path / family
    train.main([family, "--dataset", "folder", "--data-dir", str(images), "--image-size", "28", "--batch-size", "8",
                "--out", str(out), "--state-dir", str(tmp_path / "runs" / family), "--cache-dir", str(tmp_path / "cache"),
                "--quiet", "--threads", "1", *extra])
    return out


def test_train_a_dcgan_on_a_folder_through_the_cli(images, tmp_path):
    out = folder_run("dcgan", images, tmp_path, "--max-steps", "2",
                     "--set", "latent_dim=16", "generator_width=16", "discriminator_width=16")
    model, card = load_checkpoint(out)
    assert (out / "model.safetensors").exists() and card["training"]["steps"] == 2
    assert card["dataset"] == "folder" and card["data_dir"] == str(images)
    assert card["classes"] == CLASSES and card["image_shape"] == [3, 28, 28]
    assert model.sample_for_seeds(range(2)).shape == (2, 3, 28, 28)


def test_evaluate_scores_a_folder_model_with_a_classifier_of_its_classes(images, tmp_path, capsys):
    classifier = folder_run("classifier", images, tmp_path, "--max-steps", "2", "--set", "width=8", "feature_dim=16")
    vae = folder_run("vae", images, tmp_path, "--max-steps", "2", "--set", "latent_dim=4", "width=8", "hidden=32")
    assert read_card(classifier)["config"]["n_classes"] == 2
    evaluate.main([str(vae), str(classifier), "--classifier", str(classifier), "--samples", "20", "--quiet",
                   "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    metrics = read_card(vae)["metrics"]
    assert metrics["frechet_distance"] >= 0 and set(metrics["class_shares"]) == set(CLASSES)
    assert set(read_card(vae)["class_latents"]) <= set(CLASSES)
    assert 0 <= read_card(classifier)["metrics"]["test_accuracy"] <= 1


# -- hostile entries (issue 37): skipped and counted, never a traceback or a hang ----------------

def scan_line(err: str) -> dict:
    [line] = [json.loads(line) for line in err.splitlines() if '"folder scanned"' in line]
    return line


@pytest.mark.timeout(120)  # a FIFO opened for reading waits for a writer forever
def test_links_fifos_sockets_and_undecodable_names_are_skipped_and_counted(images, tmp_path, capsys):
    """Each of these once crashed training (FileNotFoundError, ELOOP, UnicodeEncodeError), hung it
    (a FIFO named x.png) or dropped a class without a word (a class folder that is a link)."""
    outside = make_folder(tmp_path / "outside", ["triangles"], per_class=6)
    os.symlink(outside / "triangles", images / "triangles")  # a class folder that is a link: followed
    os.symlink(images / "circles" / "pic000.png", images / "squares" / "linked.png")  # a link to a file: followed
    os.symlink(tmp_path / "nowhere.png", images / "circles" / "dangling.png")
    os.symlink(images / "circles" / "loop-b.png", images / "circles" / "loop-a.png")
    os.symlink(images / "circles" / "loop-a.png", images / "circles" / "loop-b.png")
    os.symlink(images, images / "squares" / "back-to-the-top")  # a folder loop
    os.mkfifo(images / "circles" / "x.png")  # opened, it would block until a writer came
    os.symlink("/dev/zero", images / "squares" / "zeros.png")
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(images / "squares" / "socket.png"))
        Image.new("RGB", (40, 40)).save(os.fsencode(images / "circles") + b"/caf\xe9.png")  # Latin-1, not UTF-8
        train_set, test_set = load(images, "train"), load(images, "test")
    files = train_set.files + test_set.files
    assert train_set.classes == ["circles", "squares", "triangles"]
    assert sum(f.startswith("triangles/") for f in files) == 6 and "squares/linked.png" in files
    assert len(files) == 2 * PER_CLASS + 6 + 1
    line = scan_line(capsys.readouterr().err)
    assert line["links followed"] == 2 and line["broken links"] == 1 and line["looping links"] == 3
    assert line["not regular files"] == 3 and line["undecodable names"] == 1


@pytest.mark.timeout(120)  # a FIFO opened for reading waits for a writer forever
def test_a_file_swapped_for_a_fifo_after_the_walk_is_skipped_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "late.png")
    with pytest.raises(folder.Unusable, match="not a regular file"):
        folder.decode_image(tmp_path / "late.png", 16)


@pytest.mark.timeout(120)  # a FIFO opened for reading waits for a writer forever
def test_fuzzed_folder_entries_load_or_fail_with_a_clear_error(tmp_path):
    """Seeded mixes of images and hostile entries at random places: every load gives the images
    that are regular files and decode, or a DatasetError; nothing else escapes or hangs."""
    rng = random.Random(37)
    kinds = ["image", "image", "dangling", "loop", "fifo", "folder link", "file link", "text", "undecodable",
             "device", "empty folder"]
    for case in range(40):
        root = tmp_path / f"case{case}"
        places = [root / name for name in ("a", "b", "a/deep")]
        for place in places:
            place.mkdir(parents=True)
        expected = 0
        for i in range(rng.randint(1, 8)):
            kind, place, name = rng.choice(kinds), rng.choice(places), f"e{i}.png"
            if kind == "image":
                Image.fromarray(drawing(case * 100 + i, (32, 32))).save(place / name)
                expected += 1
            elif kind == "dangling":
                os.symlink(tmp_path / "missing", place / name)
            elif kind == "loop":
                os.symlink(place / name, place / name)
            elif kind == "fifo":
                os.mkfifo(place / name)
            elif kind == "folder link":
                os.symlink(rng.choice([root, place, tmp_path / "missing"]), place / f"e{i}")
            elif kind == "file link":
                os.symlink(rng.choice(["/dev/null", "/etc/hostname", str(place / "e0.png")]), place / name)
            elif kind == "text":
                (place / name).write_text("not an image")
            elif kind == "undecodable":
                Image.new("L", (32, 32)).save(os.path.join(os.fsencode(place), b"\xff\xfe.png"), "PNG")
            elif kind == "device":
                os.symlink("/dev/zero", place / name)
            else:
                (place / f"e{i}").mkdir()
        try:
            loaded = [load(root, split, cache=tmp_path / "cache") for split in ("train", "test")]
        except DatasetError:
            continue  # no image, none readable, images at the top and in classes, or none in a split
        assert sum(len(split) for split in loaded) >= expected, case
