"""`python -m imgsearch.cli`: the `imgsearch` command."""

import sys

from imgsearch.cli import main

if __name__ == "__main__":
    sys.exit(main())
