"""Upload decoding in bounded memory (issue 37, finding 11): 40 concurrent 2048 x 2048 16-bit PNG
uploads took a real server from 0.52 to 3.4 GiB at peak (a float64 copy of each image, on 40
threads at once), and 1.3 GiB stayed resident. Now at most 500 MiB are added at the peak, and
memory comes back to within 100 MiB of where it was. Peak and resident memory are the server
process's own (VmHWM, reset through /proc/PID/clear_refs, and VmRSS); no clock is read."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.app.apptest import until

MiB = 1024  # in KiB, as /proc counts
UPLOADS, PEAK_BOUND, RESIDENT_BOUND = 40, 500 * MiB, 100 * MiB


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def sixteen_bit_png() -> bytes:
    """The largest image an upload may declare, 2048 x 2048, in 16-bit gray (a 27-80 KB file)."""
    y, x = np.ogrid[0:2048, 0:2048]
    buffer = io.BytesIO()
    Image.fromarray(((x * 7 + y * 13) % 65536).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads Linux's /proc")
def test_concurrent_16_bit_uploads_add_bounded_memory_that_comes_back(serve):
    body = {"image": base64.b64encode(sixteen_bit_png()).decode()}
    with serve() as server:
        url, pid = server.url + "/v1/models/vae/reconstruct", server.process.pid
        for _ in range(3):  # the decoder's and the model's first-use allocations, before the baseline
            assert httpx.post(url, json=body, timeout=120).status_code == 200
        before = _status_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) counts from here
        statuses: list[int] = []
        uploads = [threading.Thread(target=lambda: statuses.append(httpx.post(url, json=body, timeout=300).status_code))
                   for _ in range(UPLOADS)]
        for upload in uploads:
            upload.start()
        for upload in uploads:
            upload.join()
        assert statuses == [200] * UPLOADS
        peak = _status_kib(pid, "VmHWM") - before
        assert peak <= PEAK_BOUND, f"the uploads added {peak / MiB:.0f} MiB at the peak"
        # The last decode hands what they freed back to the system off the event loop: poll for it.
        until(lambda: _status_kib(pid, "VmRSS") - before <= RESIDENT_BOUND,
              f"memory to come back within {RESIDENT_BOUND // MiB} MiB of the {before // MiB} MiB before the uploads")
