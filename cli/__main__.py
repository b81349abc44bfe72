"""``python -m cli COMMAND ...``: the ``tinygraph`` command, run as a module."""

import sys

from cli.main import main

sys.exit(main())
