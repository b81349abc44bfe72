"""``python -m tinygraph``: the command-line entry point (the only core file that sees the CLI)."""

import sys

from cli.main import main

sys.exit(main())
