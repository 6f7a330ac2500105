"""`genserve serve` whose every forward pass waits until the file GENSERVE_TEST_GATE_FILE exists:
a request held in flight for exactly as long as a test needs, however fast this machine is.

    running_server(weights_dir, log, GATED_SERVER, test_gate_file=tmp_path / "open")
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from app import cli
from app.worker import Worker
from tests.app.apptest import until

GATED_SERVER = ("tests.reliability.gated_server",)  # bench.process.running_server's `command`


class FileGatedWorker(Worker):
    def __init__(self, *args, gate: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate

    def _forward(self, batch):
        until(self.gate.exists, f"the test to create {self.gate}")
        return super()._forward(batch)


if __name__ == "__main__":
    gate = Path(os.environ["GENSERVE_TEST_GATE_FILE"])
    cli.serve(cli.build_parser().parse_args(["serve", *sys.argv[1:]]), functools.partial(FileGatedWorker, gate=gate))
