"""`imgsearch`: run the local stack, ingest folders of images, search by image or id, and a demo.

Every option shows its default and the environment variable it reads (`imgsearch CMD --help`).
Exit status: 0 success; 1 some images could not be ingested (each is listed); 2 an error that
stopped the command (its message says what to do).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `imgsearch` command; its exit status."""
    # The local stack starts PostgreSQL with fork+exec while gRPC threads run; gRPC's fork
    # handlers have nothing to do there but log a line each time. gRPC reads this setting when
    # it is first imported, so it is set before the commands (and with them gRPC) are loaded.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from imgsearch.cli.parser import build_parser
    from imgsearch.errors import ImageSearchError

    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except ImageSearchError as exc:
        print(f"imgsearch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgsearch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
