"""``python -m load_balancing_module.cli``: the ``omnixan-lb`` command."""

import sys

from . import main

sys.exit(main())
