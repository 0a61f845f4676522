"""Entry point of `python -m mft_search.report`."""

import sys

from mft_search import cli
from mft_search.report.command import main

sys.exit(cli.run(main))
