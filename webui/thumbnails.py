"""Thumbnails of stored items: the picture at an item's stored uri, when that is a file on this
machine, scaled down and re-encoded as JPEG, and kept in a small in-memory cache.

The page asks for a thumbnail by collection and item id, never by path: which file is read is
decided by the item's own uri. Only decodable pictures come back, always re-encoded, so a uri
that names some other file never has its bytes served.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image, ImageOps

from imgsearch.errors import NotFound

MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_PIXELS = 100_000_000  # the embedder's own limit on decoded pictures


def local_path(uri: str) -> Path | None:
    """The file a stored uri names on this machine (an absolute path or a file:// URI), or
    None for anything else (http URLs and relative paths are never opened)."""
    path = uri.removeprefix("file://")
    if not path or "://" in path or not path.startswith("/"):
        return None
    return Path(path)


class ThumbnailCache:
    def __init__(self, *, size_px: int = 256, capacity: int = 2048) -> None:
        self.size_px = size_px
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def thumbnail(self, uri: str, what: str) -> bytes:
        """The JPEG thumbnail of the picture at `uri`; `what` names the item in errors. Cached by
        file, size and modification time, so an edited file is read again."""
        path = local_path(uri)
        if path is None:
            raise NotFound(f"{what} has no picture on this machine (uri {uri!r})")
        try:
            stat = path.stat()
        except OSError:
            raise NotFound(f"{what}: its picture {path.name} is gone") from None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        made = self._make(path, stat.st_size, what)
        with self._lock:
            self._cache[key] = made
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return made

    def _make(self, path: Path, size: int, what: str) -> bytes:
        if size > MAX_FILE_BYTES:
            raise NotFound(f"{what}: its picture {path.name} is too large to show ({size} bytes)")
        try:
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise NotFound(f"{what}: its picture {path.name} has too many pixels")
                image.draft("RGB", (self.size_px, self.size_px))  # JPEG: decode at a fraction
                picture = ImageOps.exif_transpose(image).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            raise NotFound(f"{what}: {path.name} is not a picture that can be shown") from None
        picture.thumbnail((self.size_px, self.size_px))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=85)
        return out.getvalue()
