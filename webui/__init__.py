"""The search page (`imgsearch web`): drop an image into a browser, see the stored images nearest
to it. An ASGI app over the client library (`app`), thumbnails of stored items (`thumbnails`),
and uvicorn serving it in a thread (`server`); the page itself is static HTML and JavaScript."""

from imgsearch._extras import require_extra

require_extra("web", "starlette", "uvicorn", "multipart")
