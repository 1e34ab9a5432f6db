"""imgsearch: reverse image search over gRPC — the thin client library and its generated stubs.

Importing this package never imports torch or a database driver.
"""

__version__ = "0.1.0"
