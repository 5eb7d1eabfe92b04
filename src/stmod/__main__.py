"""``python -m stmod ...`` is ``stmod-run ...`` (handy under launchers: ``torchrun -m stmod batch m.yaml``)."""

from __future__ import annotations

import sys

from stmod.cli import main

if __name__ == "__main__":
    sys.exit(main())
