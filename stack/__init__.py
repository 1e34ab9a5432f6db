"""The whole service on one machine: embedded PostgreSQL, the searcher and the embedder, in one
process (`imgsearch up`, `imgsearch demo`). The one package that composes both services: it
imports them, and nothing below it imports it. Needs the [embedder] and [searcher] extras."""

from stack.local import LocalStack, StackConfig

__all__ = ["LocalStack", "StackConfig"]
