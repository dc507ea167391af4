"""``python -m bench``: see bench/run."""

import sys

from .runner import main

sys.exit(main())
