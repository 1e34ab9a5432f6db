"""A labelled image set made on the spot, so the demo and the tests work offline: each label is a
scene (palette, layout and texture scale, like photos taken at one place), each image a
different photo-like picture of it, at one of a few natural sizes; and a few planted copies,
edited as people edit photos, so the demo can show what the duplicate search finds."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from imgsearch.photos import Edit, jpeg, resize, textured_photo

LABELS = (
    "sunset", "forest", "ocean", "desert", "snow",
    "city", "meadow", "night", "autumn", "coral",
)  # fmt: skip
SIZES = ((480, 360), (400, 300), (512, 384), (360, 480))  # landscape and portrait, as cameras


# The planted copies: what happens to a photo sent on, shrunk for the web, or saved again.
COPY_EDITS: dict[str, Edit] = {
    "re-saved at JPEG quality 60": jpeg(60),
    "shrunk to 80%": resize(0.8),
    "shrunk to 90% and re-saved at quality 75": lambda image: jpeg(75)(resize(0.9)(image)),
}


def picture(label_index: int, instance: int) -> Image.Image:
    """Picture `instance` of scene `label_index`."""
    seed = 10_000 * (label_index + 1) + instance
    return textured_photo(seed, SIZES[instance % len(SIZES)], scene=label_index)


def write_dataset(root: Path, per_label: int = 20, labels: int = 10) -> list[Path]:
    """JPEGs under root/<label>/<label>_<n>.jpg; returns their paths."""
    paths = []
    for li, label in enumerate(LABELS[:labels]):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_label):
            path = folder / f"{label}_{n:03d}.jpg"
            if not path.exists():
                picture(li, n).save(path, "JPEG", quality=90)
            paths.append(path)
    return paths


def plant_copies(originals: list[Path]) -> list[tuple[Path, Path, str]]:
    """An edited copy of some of `originals`, one per kind of edit, beside its original as
    <name>_copy.jpg: (original, copy, how it was edited)."""
    step = max(1, len(originals) // (len(COPY_EDITS) + 1))
    planted = []
    for n, (how, edit) in enumerate(COPY_EDITS.items(), 1):
        original = originals[(n * step + n) % len(originals)]
        copy = original.with_name(f"{original.stem}_copy.jpg")
        if not copy.exists():
            edit(Image.open(original).convert("RGB")).save(copy, "JPEG", quality=90)
        planted.append((original, copy, how))
    return planted
