"""models.emoji lays the npm package's images out as a class folder, from a tarball checked against
the registry's digest (a synthetic package here: tests never fetch)."""

import base64
import hashlib
import io
import json
import tarfile

import pytest

from models.data import emoji


def package(tmp_path, listing: list[dict], images: list[str]) -> str:
    """A .tgz laid out as emoji-datasource-google's, as a file:// URL."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, payload in [("package/emoji.json", json.dumps(listing).encode()),
                              *[(emoji.IMAGES + image, b"png of " + image.encode()) for image in images]]:
            member = tarfile.TarInfo(name)
            member.size = len(payload)
            archive.addfile(member, io.BytesIO(payload))
    path = tmp_path / "package.tgz"
    path.write_bytes(buffer.getvalue())
    return path.as_uri()


LISTING = [
    {"image": "1f600.png", "category": "Smileys & Emotion", "has_img_google": True},
    {"image": "1f385.png", "category": "People & Body", "has_img_google": True,
     "skin_variations": {"1F3FB": {"image": "1f385-1f3fb.png", "has_img_google": True},
                         "1F3FC": {"image": "1f385-1f3fc.png", "has_img_google": False}}},
    {"image": "1f3fb.png", "category": "Component", "has_img_google": True},
    {"image": "1f6a9.png", "category": "Flags", "has_img_google": False},
]


def test_the_images_land_in_one_folder_per_category(tmp_path, monkeypatch):
    url = package(tmp_path, LISTING, ["1f600.png", "1f385.png", "1f385-1f3fb.png", "1f385-1f3fc.png", "1f3fb.png"])
    monkeypatch.setattr(emoji, "SHA512", base64.b64encode(hashlib.sha512(open(url[7:], "rb").read()).digest()).decode())
    out = emoji.download_emoji(tmp_path / "emoji", url)
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    # Skin tones are images of their emoji's category; swatches ("Component") and images the
    # package marks as missing are left out.
    assert found == ["people-and-body/1f385-1f3fb.png", "people-and-body/1f385.png", "smileys-and-emotion/1f600.png"]
    assert (out / "smileys-and-emotion" / "1f600.png").read_bytes() == b"png of 1f600.png"


def test_a_download_that_is_not_the_pinned_package_is_refused(tmp_path):
    url = package(tmp_path, LISTING, ["1f600.png"])
    with pytest.raises(SystemExit, match="sha512"):
        emoji.download_emoji(tmp_path / "emoji", url)
    assert not (tmp_path / "emoji").exists()
