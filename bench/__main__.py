"""``python -m bench``: the benchmark harness's command line (see :mod:`bench.cli`)."""

import sys

from bench.cli import cli

sys.exit(cli())
