"""The generation worker of ``papertune serve``: the one thread that runs the model, fed by a queue.

Greedy requests waiting together, streamed or not, are generated in one left-padded batch (up to
``serve.max_batch_size``, waiting ``serve.batch_wait_ms`` for more; each gets the answer it gets alone);
sampling requests run one at a time, so that a ``seed`` reproduces an answer. A cancelled request leaves
the queue, or its row stops after the next token while the rest of its batch goes on. Generation itself
is ``papertune.inference.generate_batch``; the worker keeps the queue, the batching policy and the stats.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from papertune.inference import Completion, GenerationRequest, generate_batch
from papertune.serve.protocol import ApiError

log = logging.getLogger(__name__)

RECENT_JOBS = 16  # finished requests listed in /health


@dataclass(eq=False)
class Job:
    """One request for the generation worker. ``on_done`` (and the request's ``on_text``) run on the worker
    thread."""

    request: GenerationRequest
    on_done: Callable[[Completion | None, ApiError | None], None]
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")

    @property
    def batchable(self) -> bool:
        return self.request.decoding.greedy

    @property
    def max_new_tokens(self) -> int:
        return self.request.decoding.max_new_tokens

    def cancel(self) -> None:
        self.request.cancel()


class GenerationWorker:
    """The one thread that runs the model, fed by a queue of jobs."""

    def __init__(self, model: Any, tokenizer: Any, tokenizer_lock: threading.Lock, *, max_batch_size: int,
                 batch_wait_s: float, max_queue: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_lock = tokenizer_lock
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # submitted: requests taken into the queue; requests: generated (to the end or cancelled while running).
        self.stats = {"submitted": 0, "requests": 0, "cancelled": 0, "errors": 0, "batches": 0, "largest_batch": 0,
                      "completion_tokens": 0}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_JOBS)

    # -- life cycle --

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="papertune-generation", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            for job in self._running:
                job.cancel()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        for job in pending:
            self._fail(job, ApiError(503, "the server is shutting down", type="server_error"))
        if thread is not None:
            thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", type="server_error")
            if len(self._pending) >= self.max_queue:
                raise ApiError(503, f"the server is busy: {len(self._pending)} requests are waiting "
                               "(serve.max_queue); try again shortly", type="server_error", code="queue_full")
            self._pending.append(job)
            self.stats["submitted"] += 1
            self._cond.notify_all()
        if self._thread is None:
            self.start()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"queued": len(self._pending), "running": len(self._running), **self.stats,
                    "recent": list(self.recent)}

    # -- the worker thread --

    def _take(self) -> list[Job] | None:
        """The next job, and with a batchable one the batchable jobs waiting behind it; None to stop."""
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._pending.popleft()
            if first.request.cancelled.is_set():
                self._finish_cancelled(first)
                return []
            batch = [first]
            self._running = batch  # while it waits for batch-mates it is running, not idle, in status()
            if first.batchable and self.max_batch_size > 1:
                deadline = time.monotonic() + self.batch_wait_s
                while (sum(j.batchable for j in self._pending) < self.max_batch_size - 1
                       and (left := deadline - time.monotonic()) > 0 and not self._stopping):
                    self._cond.wait(left)
                kept: deque[Job] = deque()
                for job in self._pending:
                    if job.batchable and not job.request.cancelled.is_set() and len(batch) < self.max_batch_size:
                        batch.append(job)
                    else:
                        kept.append(job)
                self._pending = kept
            return batch

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if not jobs:
                continue
            try:
                self._generate(jobs)
            except Exception as exc:  # a failed batch fails its requests, not the server
                log.exception("generation failed for %d request(s)", len(jobs))
                with self._cond:
                    self.stats["errors"] += len(jobs)
                for job in jobs:
                    self._fail(job, ApiError(500, f"generation failed: {type(exc).__name__}: {exc}",
                                             type="server_error"))
            finally:
                with self._cond:
                    self._running = []

    def _fail(self, job: Job, error: ApiError) -> None:
        try:
            job.on_done(None, error)
        except Exception:  # the client's side is gone; nothing left to tell
            log.debug("could not report an error to request %s", job.id, exc_info=True)

    def _finish_cancelled(self, job: Job) -> None:
        self.stats["cancelled"] += 1
        self.recent.append({"id": job.id, "finish_reason": "cancelled", "completion_tokens": 0,
                            "max_tokens": job.max_new_tokens})
        log.info("request %s cancelled before it started (client gone)", job.id)

    def _generate(self, jobs: list[Job]) -> None:
        with self._cond:
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        started = time.monotonic()
        completions = generate_batch(self.model, self.tokenizer, [job.request for job in jobs],
                                     tokenizer_lock=self.tokenizer_lock)
        elapsed = time.monotonic() - started
        for job, completion in zip(jobs, completions):
            self._complete(job, completion)
        log.debug("batch of %d: %.2fs", len(jobs), elapsed)

    def _complete(self, job: Job, completion: Completion) -> None:
        reason, tokens = completion.finish_reason, completion.completion_tokens
        with self._cond:
            self.stats["requests"] += 1
            self.stats["completion_tokens"] += tokens
            if reason == "cancelled":
                self.stats["cancelled"] += 1
            self.recent.append({"id": job.id, "finish_reason": reason, "completion_tokens": tokens,
                                "max_tokens": job.max_new_tokens})
        if reason == "cancelled":
            log.info("request %s cancelled after %d tokens (client gone)", job.id, tokens)
        try:
            job.on_done(completion, None)
        except Exception:
            log.debug("request %s finished after its client left", job.id, exc_info=True)
