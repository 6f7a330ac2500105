"""An app in process whose worker the test controls, for tests that must not depend on how fast
this machine runs a model (no sleep stands as proof of anything):

    async with apptest.serving_with(weights_dir, GatedWorker, request_timeout_s=0.5) as client:
        ...                                   # every forward pass waits at client.app.state.worker.gate
        client.app.state.worker.gate.set()    # until the test opens it
"""

from __future__ import annotations

import threading

from app.worker import Worker
from tests.app.apptest import DEADLINE_S


class GatedWorker(Worker):
    """The worker with every forward pass held at `gate` until the test opens it; `entered` is set
    as a pass reaches the gate. A pass is then exactly as long as the test needs, on any machine."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.entered = threading.Event(), threading.Event()

    def _forward(self, batch):
        self.entered.set()
        if not self.gate.wait(DEADLINE_S):
            raise RuntimeError(f"the test did not open the gate within {DEADLINE_S} s")
        return super()._forward(batch)

    def stop(self, timeout: float = 30.0) -> None:
        self.gate.set()  # a pass still held finishes, and the thread ends
        super().stop(timeout)
