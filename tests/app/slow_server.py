"""`genserve serve` with a fault, for the tests that need a real server whose every forward pass
takes GENSERVE_TEST_PASS_DELAY_S seconds more (apptest.SlowWorker):

    running_server(weights_dir, log, SLOW_SERVER, test_pass_delay_s=1, queue_size=1)
"""

from __future__ import annotations

import functools
import os
import sys

from app import cli
from tests.app.apptest import SlowWorker

if __name__ == "__main__":
    delay = float(os.environ["GENSERVE_TEST_PASS_DELAY_S"])
    cli.serve(cli.build_parser().parse_args(["serve", *sys.argv[1:]]),
              functools.partial(SlowWorker, pass_delay_s=delay))
