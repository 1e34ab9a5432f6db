"""`python -m imgsearch.cli`: the `imgsearch` command."""

import sys

from imgsearch.cli import main

sys.exit(main())
