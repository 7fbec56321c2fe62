"""``python -m weakseg`` (what ``torchrun ... -m weakseg train ...`` runs)."""

import sys

from weakseg.cli import main

sys.exit(main())
