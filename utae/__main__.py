"""``python -m utae COMMAND ...``: the command line (:mod:`utae.cli`)."""

import sys

from utae.cli import main

sys.exit(main())
