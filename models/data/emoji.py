"""Google's Noto emoji as an image folder: one subfolder per Unicode emoji category.

The images come from the npm registry's `emoji-datasource-google` package (64x64 RGBA PNGs, with a
category for each emoji in its emoji.json), fetched only when a user asks:

    python -m models.emoji                       # -> ~/.cache/genserve/emoji, about 75 MB down
    python -m models.train dcgan --dataset folder --data-dir ~/.cache/genserve/emoji --image-size 32

Licences: the images are Noto Emoji's, under the Apache License 2.0 (flags: public domain); the
package's metadata is MIT. Both allow shipping weights trained on them, with the notice kept
(weights/*/card.json names the source and its licence).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

VERSION = "16.0.0"
TARBALL = f"https://registry.npmjs.org/emoji-datasource-google/-/emoji-datasource-google-{VERSION}.tgz"
# The registry's own integrity field for that version: a changed or truncated download is refused.
SHA512 = "ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
DEFAULT_DIR = Path(os.path.expanduser("~/.cache/genserve/emoji"))
IMAGES = "package/img/google/64/"
# "Component" holds five skin-tone and hair swatches, not pictures of anything: left out.
SKIPPED_CATEGORIES = {"Component"}
SOURCE = (f"Noto Emoji (Apache License 2.0) via npm emoji-datasource-google {VERSION} (MIT), "
          "one class per Unicode emoji category")


def folder_name(category: str) -> str:
    """'Smileys & Emotion' -> 'smileys-and-emotion': a class name that is a safe folder name."""
    return category.lower().replace("&", "and").replace(" ", "-")


def emoji_images(archive: tarfile.TarFile) -> dict[str, str]:
    """{image file name: category} for every emoji with a Google image, skin tones included."""
    listing = json.load(archive.extractfile("package/emoji.json"))
    chosen = {}
    for emoji in listing:
        if emoji["category"] in SKIPPED_CATEGORIES:
            continue
        variants = [emoji, *emoji.get("skin_variations", {}).values()]
        chosen.update({v["image"]: emoji["category"] for v in variants if v.get("has_img_google")})
    return chosen


def download_emoji(data_dir: str | Path = DEFAULT_DIR, url: str = TARBALL) -> Path:
    """Fetch the package once and lay its images out as data_dir/<category>/<codepoints>.png."""
    data_dir = Path(data_dir)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise SystemExit(f"error: cannot download {url} ({e}); this machine may be offline")
    if base64.b64encode(hashlib.sha512(payload).digest()).decode() != SHA512:
        raise SystemExit(f"error: {url} does not match the registry's sha512 for version {VERSION}")
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
        categories = emoji_images(archive)
        for member in archive.getmembers():
            name = member.name.removeprefix(IMAGES)
            if member.isfile() and member.name.startswith(IMAGES) and name in categories:
                target = data_dir / folder_name(categories[name]) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    return data_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.emoji",
                                     description="Fetch Google's Noto emoji as an image folder (one class per category).")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    folder = download_emoji(parser.parse_args(argv).data_dir)
    counts = {d.name: len(list(d.glob("*.png"))) for d in sorted(folder.iterdir()) if d.is_dir()}
    print(json.dumps({"folder": str(folder), "source": SOURCE, "images": sum(counts.values()), "classes": counts}))


if __name__ == "__main__":
    main()
