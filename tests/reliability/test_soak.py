"""A short soak: 500 sequential requests across every endpoint; the answers are the expected ones
and resident memory after warm-up grows less than 10%. (bench/reliability.py runs 5,000.)"""

from __future__ import annotations

import pytest

from bench.reliability import healthy, soak


@pytest.mark.slow
def test_memory_stays_flat_over_500_mixed_requests(server):
    result = soak(server, requests=500, warmup=100, deadline_s=300)
    assert result.five_xx == 0
    assert not result.unexpected
    assert result.rss_warm_kib > 0 and result.growth < 0.10, (result.rss_warm_kib, result.rss_end_kib)
    assert healthy(server.url)
