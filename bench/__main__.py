"""``python -m bench``: the benchmark suite (``--help`` for its options)."""

import sys

from bench.suite import main

sys.exit(main())
