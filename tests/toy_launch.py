"""``growkit`` with the throw-away family registered: what torchrun starts in the 2-process test."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toy_family  # noqa: E402

from growkit.cli import main  # noqa: E402

if __name__ == "__main__":
    toy_family.register()
    sys.exit(main())
