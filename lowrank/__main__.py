"""``python -m lowrank`` runs the command line (see :mod:`lowrank.cli`)."""

import sys

from .cli import main

sys.exit(main())
