"""The inference worker: one thread per device owns the models and runs every forward pass.

Requests reach it as jobs on a bounded queue. When the worker is free it takes the oldest job of
the model it served least recently (models take turns, so a slow model never holds a fast one for
more than a pass) and every queued job that can share its pass (same model, operation and
parameters), up to `max_batch` images, into one forward pass under `torch.inference_mode()`, and
splits the result back. A lone request never waits for company: under load, the requests that
arrive while a pass runs make up the next one (at concurrency 1 a fixed 2 ms window cost 0.7x the
unbatched requests/s; docs/benchmarks.md). `batch_wait_ms`, when set, lets a pass wait that long
for more, and only while other requests are in the server on their way to the queue. The event
loop only queues jobs and awaits their futures, which the thread completes with
`call_soon_threadsafe`.

A full queue is refused at once (the route answers 503) rather than growing memory; a job whose
request timed out or went away leaves the queue at once, freeing its slot, and is never run.

A failed forward pass fails its requests, never the thread. Should the thread itself die (a bug),
it is logged, what waits and what comes after is refused (503), and `failure` says why: /healthz
then answers 503, so the orchestrator's liveness probe restarts the process.
(`GENSERVE_BATCH_WAIT_MS=inf` once killed the thread at its first batched request: every request
then timed out while /healthz said ok, issue 37.)

The worker also decides how a module runs, once, on its first batch after a load: DCGAN and VAE in
channels-last memory (oneDNN then skips reordering the activations around every convolution: 1.2x
to 1.45x the images/s at batch 32-64 on the CPU, see docs/benchmarks.md), and on CUDA in the
configured dtype.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from app.metrics import Metrics
from app.operations import Operation
from app.registry import ServedModel
from models.inference import inference_dtype, model_input, prepare  # shared with the Python API

log = logging.getLogger("genserve.worker")

class QueueFull(Exception):
    """The queue holds `queue_size` jobs, or the worker is stopping."""


class InferenceTimeout(Exception):
    """The job did not finish within the request timeout."""


@dataclass(eq=False)
class Job:
    model: ServedModel
    operation: Operation
    inputs: tuple[torch.Tensor | None, ...]
    params: dict[str, Any]
    size: int  # rows of the batch dimension, i.e. images
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can share a forward pass."""
        if not self.operation.batchable:
            return (id(self),)
        absent = tuple(t is None for t in self.inputs)
        return (id(self.model), self.operation.name, tuple(sorted(self.params.items())), absent)

    @property
    def abandoned(self) -> bool:
        """Its request stopped waiting (timeout, disconnect): the route cancelled the future."""
        return self.future.cancelled()


def settle(jobs: list[Job], outcomes: list[torch.Tensor | BaseException]) -> None:
    """Hand each job its outcome, a tensor or an exception (from the worker thread): one callback
    per event loop for the whole batch, so that a pass of 32 requests wakes the loop once."""
    deliveries: dict[asyncio.AbstractEventLoop, list] = {}
    for job, outcome in zip(jobs, outcomes):
        deliveries.setdefault(job.future.get_loop(), []).append((job.future, outcome))
    for loop, pairs in deliveries.items():
        try:
            loop.call_soon_threadsafe(_deliver, pairs)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass


def _deliver(pairs: list[tuple[asyncio.Future, torch.Tensor | BaseException]]) -> None:
    for future, outcome in pairs:
        if future.done():  # given up meanwhile
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _merge(jobs: list[Job], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor | None]:
    """Each input concatenated over the jobs, on the device; floating inputs in the model's dtype."""
    merged = []
    for parts in zip(*(job.inputs for job in jobs)):
        if parts[0] is None:
            merged.append(None)
            continue
        merged.append(model_input(torch.cat(parts), device, dtype))
    return merged


class Worker:
    def __init__(self, device: torch.device, metrics: Metrics, *, batch_wait_ms: float, max_batch: int,
                 queue_size: int, timeout_s: float, channels_last: bool = True, dtype: str = "float32",
                 requests_in_server: Callable[[], int] = lambda: 0):
        self.device = device
        self.channels_last = channels_last
        self.dtype = inference_dtype(device, dtype)
        self._prepared: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # a reload brings new modules
        self.metrics = metrics
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.requests_in_server = requests_in_server  # requests begun by the server, queued or not
        self._pending: deque[Job] = deque()
        self._passes = 0
        self._last_served: dict[str, int] = {}  # model name -> the pass that last served it
        self._changed = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.failure: str | None = None  # why the thread died, if it did
        metrics.watch_queue(lambda: len(self._pending), self.oldest_waits)

    # -- the event loop's side -----------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"genserve-worker-{self.device}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, refuse what still waits, and end the thread."""
        with self._changed:
            self._stopping = True
            left, self._pending = list(self._pending), deque()
            self._changed.notify_all()
        settle(left, [QueueFull("the service is stopping")] * len(left))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def run(self, model: ServedModel, operation: Operation, *inputs: torch.Tensor | None,
                  **params: Any) -> torch.Tensor:
        """Queue one job (its batch is the first input's first dimension) and wait for its output, on
        the CPU. Raises QueueFull or InferenceTimeout; if the awaiting task is cancelled (client
        gone), the job is abandoned and never runs."""
        job = Job(model, operation, inputs, params, inputs[0].shape[0], asyncio.get_running_loop().create_future())
        with self._changed:
            if self.failure is not None:
                self.metrics.rejected.labels("worker_failed").inc()
                raise QueueFull(f"the inference worker has failed ({self.failure}); the service is restarting")
            if self._stopping or len(self._pending) >= self.queue_size:
                self.metrics.rejected.labels("stopping" if self._stopping else "queue_full").inc()
                raise QueueFull("the service is stopping" if self._stopping else "the inference queue is full")
            self._pending.append(job)
            self._changed.notify()
        try:
            return await asyncio.wait_for(job.future, self.timeout_s)  # cancels the future on timeout
        except asyncio.TimeoutError:
            self.metrics.rejected.labels("timeout").inc()
            self._withdraw(job)
            raise InferenceTimeout(f"inference took longer than {self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            self.metrics.rejected.labels("disconnected").inc()
            self._withdraw(job)
            raise

    def _withdraw(self, job: Job) -> None:
        """Take an abandoned job off the queue, so that its slot takes the next request."""
        with self._changed:
            try:
                self._pending.remove(job)
            except ValueError:  # the worker has taken it: it drops it there unless its pass has begun
                return
        self.metrics.skipped.inc()

    # -- the worker thread's side --------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._run(batch)
        except BaseException as e:  # noqa: BLE001 -- a bug: logged here, and the thread ends
            self._died(e)

    def _died(self, error: BaseException) -> None:
        """Record why the thread ends, log it, and refuse what waits: nothing would ever run it."""
        log.critical("the inference worker died; /healthz now answers 503", exc_info=error)
        with self._changed:
            self.failure = f"{type(error).__name__}: {error}"
            left, self._pending = list(self._pending), deque()
        settle(left, [QueueFull(f"the inference worker has failed ({self.failure})")] * len(left))

    def _next_batch(self) -> list[Job] | None:
        """Wait for a job; give its batch up to `batch_wait_s` to fill while others are on their
        way; take it off the queue."""
        with self._changed:
            while not self._pending and not self._stopping:
                self._changed.wait()
            if self._stopping:
                return None
            head = self._fair_head()
            deadline = head.enqueued + self.batch_wait_s
            while (remaining := deadline - time.monotonic()) > 0 and self._arriving() and not self._stopping:
                if sum(job.size for job in self._pending if job.key == head.key) >= self.max_batch:
                    break
                self._changed.wait(remaining)
            batch, images, kept = [], 0, deque()
            for job in self._pending:
                if job.abandoned:
                    self.metrics.skipped.inc()
                elif job.key == head.key and (not batch or images + job.size <= self.max_batch):
                    batch.append(job)
                    images += job.size
                else:
                    kept.append(job)
            self._pending = kept
            return batch

    def _fair_head(self) -> Job:
        """The job the next pass is built around: the oldest job of the model served least
        recently. Each model with work waiting gets a pass in turn (round robin), so a slow model's
        queue (a PixelCNN pass takes a third of a second, a DCGAN one milliseconds) delays a fast
        model's request by one pass at most, never by the whole queue ahead of it."""
        # min() keeps the first of equals: among a model's jobs, the oldest.
        head = min(self._pending, key=lambda job: self._last_served.get(job.model.name, -1))
        self._passes += 1
        self._last_served[head.model.name] = self._passes
        return head

    def oldest_waits(self) -> dict[str, float]:
        """Seconds the oldest queued job of each model with work waiting has waited."""
        now = time.monotonic()
        with self._changed:
            waits: dict[str, float] = {}
            for job in self._pending:
                waits.setdefault(job.model.name, now - job.enqueued)
        return waits

    def _arriving(self) -> bool:
        """Whether requests are in the server that have not queued a job (yet): being read,
        validated, or drawing their latents (or on their way out)."""
        return self.requests_in_server() > len(self._pending)

    def _run(self, batch: list[Job]) -> None:
        batch = [job for job in batch if not job.abandoned]
        if not batch:
            return
        first = batch[0]
        labels = (first.model.name, first.operation.name)
        started = time.monotonic()
        queue_seconds = self.metrics.queue_seconds.labels(*labels)
        for job in batch:
            queue_seconds.observe(started - job.enqueued)
        self.metrics.batch_images.labels(*labels).observe(sum(job.size for job in batch))
        self.metrics.batch_requests.labels(*labels).observe(len(batch))
        try:
            parts = self._forward(batch)
        except Exception as e:  # a failed forward pass fails its requests, never the worker
            log.exception("inference failed", extra={"model": labels[0], "operation": labels[1]})
            settle(batch, [e] * len(batch))
            return
        finally:
            self.metrics.inference_seconds.labels(*labels).observe(time.monotonic() - started)
        settle(batch, parts)

    def _forward(self, batch: list[Job]) -> tuple[torch.Tensor, ...]:
        """The batch's one forward pass: its jobs' inputs merged, its output split back per job."""
        first = batch[0]
        module = self._prepare(first.model.module)
        with torch.inference_mode():
            output = first.operation.run(module, *_merge(batch, self.device, self.dtype), **first.params)
            return output.float().cpu().split([job.size for job in batch])

    def _prepare(self, module: nn.Module) -> nn.Module:
        """The module as this worker runs it, converted on its first batch."""
        if module not in self._prepared:
            prepare(module, channels_last=self.channels_last, dtype=self.dtype)
            self._prepared.add(module)
        return module
