"""A folder of your own images as a dataset: `load_dataset("folder", ...)` lands here.

    DIR/cats/a.png, DIR/dogs/b.jpg ...   one subfolder per class (sorted names), any depth below it
    DIR/a.png, DIR/b.webp ...            no subfolders: unlabelled (no classes, every label 0)

PNG, JPEG, WebP, BMP and GIF (the first frame) are read; names starting with a dot are skipped.
Each image is turned upright (its EXIF orientation, ignored when it cannot be read), composited on
white if it has transparency, scaled so that its shorter side is N (Lanczos) and centre-cropped to
N x N. An image whose shorter side is below N fails the load, naming the option (`upscale`,
`--upscale`) that enlarges such images instead; the enlarged ones are counted on stderr.

Only regular files are opened: FIFOs, devices and sockets are skipped, as are dangling and looping
symbolic links and names that are not UTF-8. Links to files and links to folders (a class folder
that is a link, say) are both followed, unless they lead back into a folder they sit in; the
walk's counts go to stderr in one JSON line, `{"event": "folder scanned", "links followed": ...}`.

The channels default to 3 when any image has colour, else 1. One image in twenty is held out as
the "test" split, chosen by a hash of its path relative to DIR, so adding or removing files never
moves the others.

The images are decoded once, into `CACHE_DIR/folder-<name>-<N>-<key>.npy` (pixels) and `.json`
(the files they came from), keyed by every file's path, size and mtime, N, the channels asked
for and `upscale`: a changed folder is decoded afresh, an unchanged one is read back.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from tqdm import tqdm

from models.card import IMAGE_SIDE
from models.data.dataset import DatasetError, ImageDataset

FOLDER = "folder"  # the data set's name in cards and flags

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
CACHE_DIR = Path("runs/cache")
CACHE_VERSION = 1  # bump when decoding changes, so old caches are not read back
TEST_FRACTION = 0.05
MIN_SIDE = 8
# A small file may declare a huge image (a decompression bomb): refuse it before decoding, as the
# API refuses uploads. Higher than the API's 2048 x 2048, so that camera photos (48 MP) still load.
MAX_PIXELS = 64 * 1024 * 1024
# An RGB image whose channels never differ by more than this (JPEG rounding) is gray.
GRAY_TOLERANCE = 2
PROGRESS_FROM = 200  # files; fewer decode in a blink
SKIP_EXAMPLES = 5


class Unusable(Exception):
    """A file that is skipped: unreadable, or declaring too many pixels."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


class TooSmall(Exception):
    """An image whose shorter side is below N: not skipped, the whole load fails (say so once),
    unless it is to be upscaled."""

    def __init__(self, size: tuple[int, int]):
        super().__init__(f"{size[0]}x{size[1]}")
        self.size = size


def is_held_out(relative_path: str) -> bool:
    """Whether a file (its path relative to DIR, '/'-separated) belongs to the test split: a hash
    of the path alone, so the split never moves."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < TEST_FRACTION * 2 ** 64


class Scan:
    """What a walk of the folder met besides images: links followed, and entries skipped by kind."""

    def __init__(self) -> None:
        self.links_followed = 0
        self.skipped: dict[str, list[str]] = {}

    def skip(self, kind: str, path: str) -> None:
        self.skipped.setdefault(kind, []).append(path)

    def report(self, directory: Path) -> None:
        """One JSON line on stderr when there is anything to say, once per process (a run loads
        the folder for each split)."""
        if not self.links_followed and not self.skipped:
            return
        examples = [f"{path}: {kind}" for kind, paths in self.skipped.items() for path in paths][:SKIP_EXAMPLES]
        line = json.dumps({"event": "folder scanned", "folder": str(directory), "links followed": self.links_followed,
                           **{kind: len(paths) for kind, paths in self.skipped.items()}, "examples": examples})
        if line not in _REPORTED:
            _REPORTED.add(line)
            print(line, file=sys.stderr, flush=True)


_REPORTED: set[str] = set()


def _is_utf8(name: str) -> bool:
    """Whether a name read from the file system is UTF-8 (os.scandir hands other bytes over as
    surrogates, which the cache key and the split's hash could not encode)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk(folder: Path, relative: str, ancestors: frozenset, files: list[str], scan: Scan) -> None:
    """Add the image files under `folder` (its path relative to DIR: `relative`) to `files`,
    following links; `ancestors` are the (device, inode) of the folders it lies in, so that a link
    back into one of them is a loop, skipped."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as e:
        scan.skip("unreadable folders", f"{relative or '.'} ({e.strerror})")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = f"{relative}/{entry.name}" if relative else entry.name
        if not _is_utf8(entry.name):
            scan.skip("undecodable names", path.encode("utf-8", "backslashreplace").decode())
            continue
        try:
            link = entry.is_symlink()
            status = entry.stat()  # follows a link
        except OSError as e:
            scan.skip("looping links" if e.errno == errno.ELOOP else "broken links", path)
            continue
        if stat.S_ISDIR(status.st_mode):
            identity = (status.st_dev, status.st_ino)
            if identity in ancestors:
                scan.skip("looping links", path)
                continue
            scan.links_followed += link
            _walk(Path(entry.path), path, ancestors | {identity}, files, scan)
        elif Path(entry.name).suffix.lower() in SUFFIXES:
            if not stat.S_ISREG(status.st_mode):  # a FIFO would block the loader's open() forever
                scan.skip("not regular files", path)
                continue
            scan.links_followed += link
            files.append(path)


def find_images(directory: Path) -> tuple[list[str], list[str], Scan]:
    """(image paths relative to `directory`, sorted; class names; what else the walk met): the
    classes are the top-level subfolders that hold images, or none when every image sits at the top."""
    files: list[str] = []
    scan = Scan()
    top = directory.stat()
    _walk(directory, "", frozenset({(top.st_dev, top.st_ino)}), files, scan)
    files.sort()
    top_files = [f for f in files if "/" not in f]
    classes = sorted({f.split("/")[0] for f in files if "/" in f})
    if top_files and classes:
        raise DatasetError(f"{directory} holds images both at its top ({top_files[0]}, ...) and in subfolders "
                           f"({classes[0]}/, ...); put every image in a class subfolder, or none")
    return files, classes, scan


def open_regular(path: Path):
    """A regular file opened for reading, or Unusable: opened without blocking, so that a FIFO (or a
    file swapped for one since the walk) is refused instead of waiting for a writer forever."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise Unusable("unreadable", e.strerror or type(e).__name__) from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise Unusable("not regular files", "not a regular file")
    return os.fdopen(descriptor, "rb")


def decode_image(path: Path, size: int, upscale: bool = False) -> np.ndarray:
    """One image file -> uint8 [size, size, 3]: upright, on white, shorter side scaled to `size`
    (Lanczos), centre-cropped. Raises Unusable, or TooSmall for an image smaller than `size`
    unless `upscale`."""
    try:
        with warnings.catch_warnings(), open_regular(path) as file:
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's own bomb check
            with Image.open(file, formats=FORMATS) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Unusable("refused", f"declares {image.width}x{image.height} pixels, "
                                              f"more than {MAX_PIXELS}")
                if min(image.size) < size and not upscale:
                    raise TooSmall(image.size)
                # JPEG decodes at 1/2, 1/4 or 1/8 scale for free; keep twice N for Lanczos to finish.
                image.draft(None, (2 * size, 2 * size))
                rgb = to_rgb(upright(image))
                return np.asarray(ImageOps.fit(rgb, (size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Unusable("refused", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # what Pillow raises on corrupt data
        raise Unusable("unreadable", str(e) or type(e).__name__) from None


# EXIF orientation -> the turn that makes the image upright (as ImageOps.exif_transpose turns it).
TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_90}


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; as it is when its EXIF cannot be read or holds
    no orientation from 1 to 8. (ImageOps.exif_transpose also rewrites the EXIF it read, and
    raised TypeError, struct.error or AttributeError on malformed tags: issue 37.)"""
    try:  # (Pillow warns of each corrupt tag it skips; catch_warnings would not be thread-safe here)
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # noqa: BLE001 -- whatever malformed metadata makes Pillow's parser raise
        return image
    if type(orientation) is not int or orientation not in TURNS:
        return image
    return image.transpose(TURNS[orientation])


def to_rgb(image: Image.Image, background: str = "white") -> Image.Image:
    """Any mode (palette, gray, gray + alpha, CMYK, 16-bit) -> 8-bit RGB, transparency composited
    on `background` ("white", as the folder's images are, or "black"). The API's uploads too."""
    if image.mode.startswith("I"):  # 16-bit ("I;16", "I;16B") or 32-bit gray: scale to 8 bits
        # round(v / 257) as (v + 128) // 257 (no level lies halfway), in place on one int32 copy: a
        # float64 one and its temporaries took 130 MB for a 2048 x 2048 image (issue 37).
        levels = np.asarray(image).astype(np.int32, copy=False)
        np.clip(levels, 0, 65535, out=levels)
        levels += 128
        levels //= 257
        image = Image.fromarray(levels.astype(np.uint8))
    if image.mode in ("P", "PA", "LA", "La", "RGBA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba).convert("RGB")
    return image.convert("RGB")


def has_colour(rgb: np.ndarray) -> bool:
    """Whether any pixel of uint8 [..., 3] has channels further apart than JPEG's rounding."""
    return int((rgb.max(-1).astype(np.int16) - rgb.min(-1)).max()) > GRAY_TOLERANCE


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> uint8 [...] by ITU-R 601 luma, rounded as Pillow's convert("L") does
    (so an image that was gray comes back exactly)."""
    return ((rgb.astype(np.uint32) @ np.array([19595, 38470, 7471], np.uint32) + 0x8000) >> 16).astype(np.uint8)


def decode_folder(directory: Path, files: list[str], size: int, channels: int | None,
                  quiet: bool, upscale: bool = False) -> tuple[np.ndarray, list[str]]:
    """Decode every file: (uint8 [M, C, size, size], the M files kept). Unusable files are skipped
    and counted in one JSON line on stderr; any image smaller than `size` fails the load, or with
    `upscale` is enlarged, and those are counted in one JSON line too."""
    pixels = np.empty((len(files), size, size, 3), np.uint8)
    kept: list[str] = []
    skipped: dict[str, list[str]] = {}
    too_small: list[tuple[str, tuple[int, int]]] = []
    in_colour = False
    for name in tqdm(files, desc=f"decoding {directory.name}", unit="image", mininterval=1,
                     disable=quiet or len(files) < PROGRESS_FROM, dynamic_ncols=True):
        try:
            try:
                image = decode_image(directory / name, size)
            except TooSmall as e:
                too_small.append((name, e.size))
                if not upscale:
                    continue
                image = decode_image(directory / name, size, upscale=True)  # opened again: small, and rare
        except Unusable as e:
            skipped.setdefault(e.kind, []).append(f"{name}: {e}")
            continue
        pixels[len(kept)] = image
        kept.append(name)
        in_colour = in_colour or has_colour(image)
    if skipped:
        examples = [line for lines in skipped.values() for line in lines][:SKIP_EXAMPLES]
        print(json.dumps({"event": "images skipped", "folder": str(directory),
                          **{kind: len(lines) for kind, lines in skipped.items()}, "examples": examples}),
              file=sys.stderr, flush=True)
    if too_small:
        name, smallest = min(too_small, key=lambda item: min(item[1]))
        counted = (f"{len(too_small)} of the {len(files)} images in {directory} are smaller than {size} px on their "
                   f"shorter side (the smallest: {name}, {smallest[0]}x{smallest[1]})")
        if not upscale:
            raise DatasetError(f"{counted}; remove them, pass a smaller --image-size, or pass --upscale to enlarge "
                               f"them (Lanczos)")
        print(json.dumps({"event": "images upscaled", "folder": str(directory), "count": len(too_small),
                          "message": f"{counted}: enlarged to {size} px (--upscale)"}), file=sys.stderr, flush=True)
    if not kept:
        raise DatasetError(f"none of the {len(files)} image files in {directory} could be read "
                           f"(e.g. {next(iter(skipped.values()))[0]})")
    pixels = pixels[:len(kept)]
    if (channels or (3 if in_colour else 1)) == 1:
        return np.ascontiguousarray(to_gray(pixels)[:, None]), kept
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), kept


def cache_key(directory: Path, files: list[str], size: int, channels: int | None, upscale: bool = False) -> str:
    """A digest of what the decoded pixels depend on: each file's path, size and mtime, and the options."""
    options = [CACHE_VERSION, size, channels] + ([True] if upscale else [])  # the keys made before upscale stay
    digest = hashlib.sha256(json.dumps(options).encode())
    for name in files:
        try:
            status = (directory / name).stat()
            digest.update(f"{name}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
        except OSError:  # gone since the walk: decoding will skip it
            digest.update(f"{name}\0gone\n".encode())
    return digest.hexdigest()[:16]


def cached_pixels(directory: Path, files: list[str], size: int, channels: int | None, cache_dir: Path,
                  quiet: bool, upscale: bool = False) -> tuple[np.ndarray, list[str]]:
    """The decoded folder from the cache, or decoded now and written there."""
    key = cache_key(directory, files, size, channels, upscale)
    stem = cache_dir / f"folder-{directory.resolve().name}-{size}-{key}"
    pixels_file, files_file = stem.with_suffix(".npy"), stem.with_suffix(".json")
    if pixels_file.exists() and files_file.exists():
        kept = json.loads(files_file.read_text())["files"]
        pixels = np.load(pixels_file)
        if pixels.shape[0] == len(kept):
            return pixels, kept
    pixels, kept = decode_folder(directory, files, size, channels, quiet, upscale)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Written through temporary names, pixels first: a crash or a second process (torchrun ranks
    # decode side by side) never leaves a cache entry whose parts do not match.
    temporary = f".{os.getpid()}.tmp"
    with open(pixels_file.with_name(pixels_file.name + temporary), "wb") as f:
        np.save(f, pixels)
    os.replace(pixels_file.with_name(pixels_file.name + temporary), pixels_file)
    files_file.with_name(files_file.name + temporary).write_text(json.dumps({"folder": str(directory), "files": kept}))
    os.replace(files_file.with_name(files_file.name + temporary), files_file)
    return pixels, kept


def load_folder(data_dir: str | Path | None, split: str, image_size: int | None, channels: int | None = None,
                limit: int | None = None, cache_dir: str | Path | None = None, quiet: bool = False,
                upscale: bool = False) -> ImageDataset:
    """A split ("train" or "test") of an image folder as uint8 [M, C, N, N], labels and class names;
    with `upscale`, images smaller than N are enlarged rather than refused."""
    if data_dir is None or image_size is None:
        raise DatasetError("--dataset folder needs --data-dir DIR and --image-size N")
    if not MIN_SIDE <= image_size <= IMAGE_SIDE[1]:
        raise DatasetError(f"--image-size {image_size}: must be between {MIN_SIDE} and {IMAGE_SIDE[1]}")
    if channels not in (None, 1, 3):
        raise DatasetError(f"--channels {channels}: must be 1 (gray) or 3 (colour)")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such folder")
    files, classes, scan = find_images(directory)
    scan.report(directory)
    if not files:
        raise DatasetError(f"{directory} holds no image files ({', '.join(FORMATS)}), at its top or in subfolders")
    pixels, kept = cached_pixels(directory, files, image_size, channels, Path(cache_dir or CACHE_DIR), quiet, upscale)
    chosen = [i for i, name in enumerate(kept) if is_held_out(name) == (split == "test")]
    if not chosen:
        raise DatasetError(f"no image of {directory}'s {len(kept)} falls in its {split} split "
                           f"({TEST_FRACTION:.0%} are held out for test); add images")
    chosen = chosen[:limit] if limit is not None else chosen
    labels = [classes.index(kept[i].split("/")[0]) if classes else 0 for i in chosen]
    return ImageDataset(name=FOLDER, split=split, images=torch.from_numpy(pixels[chosen]),
                        labels=torch.tensor(labels, dtype=torch.int64), classes=classes, background="white",
                        files=[kept[i] for i in chosen])
