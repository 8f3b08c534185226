"""``python -m lowrank.train COMMAND ...`` (what ``torchrun ... -m lowrank.train train`` runs)."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main())
