"""Entry point of `python -m mft_search.report`."""

import sys

from .. import cli
from .command import main

sys.exit(cli.run(main))
