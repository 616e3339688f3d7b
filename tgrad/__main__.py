"""``python -m tgrad``."""

import sys

from tgrad.cli import main

sys.exit(main())
