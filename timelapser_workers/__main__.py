"""`python -m timelapser_workers ...` is the `timelapser-workers` command."""

import sys

from timelapser_workers.app.cli import main

sys.exit(main())
