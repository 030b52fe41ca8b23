"""``python -m bench [--clients N] [--runs R] [--json PATH]``: the fan-out benchmark."""

import sys

from bench.fanout import main

sys.exit(main())
