"""The scheduler: one thread runs the model; requests join and leave its running batch.

HTTP handlers (asyncio) submit a :class:`Job` (one request: its n choices) and read its events
from an asyncio queue; the decode thread admits waiting jobs between steps while the batch has
room, turns each row's tokens into text (stop strings included, :class:`autodeco.engine.RowText`)
and drops the rows of finished or cancelled jobs at once.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from autodeco.decoding import RowFailed, RowRequest, RunningBatch, TokenEvent
from autodeco.speculative import Speculation
from autodeco.engine import RowText, StreamEvent, eos_ids
from autodeco.errors import AutoDecoError
from autodeco.sampling import SamplingParams


class QueueFull(AutoDecoError):
    """More requests wait than the server accepts (``--max-queue``)."""


@dataclass(eq=False)
class Job:
    """One request: ``prompt`` ids decoded ``len(params)`` times (OpenAI's ``n``), one row per
    choice. Events are :class:`StreamEvent` (``index`` = the choice), an :class:`AutoDecoError`
    if the job failed, and None once every choice has finished."""

    prompt: list[int]
    params: list[SamplingParams]
    logprobs: int | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def put(self, item: StreamEvent | AutoDecoError | None) -> None:
        """Deliver an event from the decode thread to the handler's event loop."""
        _send(self.loop, [(self, item)])


def _send(loop: asyncio.AbstractEventLoop, items: list[tuple[Job, StreamEvent | AutoDecoError | None]]) -> None:
    """Hand events to their jobs' queues with one wake-up of the event loop."""

    def put_all() -> None:
        for job, item in items:
            job.events.put_nowait(item)

    try:
        loop.call_soon_threadsafe(put_all)
    except RuntimeError:  # the loop has closed: the server is shutting down
        pass


@dataclass
class _Choice:
    job: Job
    index: int
    text: RowText
    done: bool = False


class Scheduler:
    """Owns the model and a :class:`RunningBatch` of at most ``max_batch_size`` rows; at most
    ``max_queue`` jobs wait for room. ``share_prefixes`` (the default) prefills the rows that join
    together with one prompt once, e.g. the n choices of a request (see :class:`RunningBatch`);
    off, each row is prefilled on its own. The tokens are the same either way."""

    def __init__(
        self, model: Any, tokenizer: PreTrainedTokenizerBase, max_batch_size: int = 32, max_queue: int = 256, speculation: Speculation | None = None,
        *, share_prefixes: bool = True,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.eos = eos_ids(model, tokenizer)
        self.speculation = speculation
        self.share_prefixes = share_prefixes
        self.batch = self._new_batch()
        self.waiting: deque[Job] = deque()
        self.choices: dict[tuple[int, int], _Choice] = {}
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="autodeco-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def running(self) -> int:
        """Rows decoding now."""
        return len(self.batch)

    @property
    def queued(self) -> int:
        """Jobs waiting for room in the batch."""
        return len(self.waiting)

    def submit(self, job: Job) -> None:
        """Queue a job; raises :class:`QueueFull` when ``max_queue`` jobs already wait."""
        if len(job.params) > self.max_batch_size:
            raise AutoDecoError(f"n={len(job.params)} is more than the server's batch size ({self.max_batch_size}); ask for fewer choices")
        with self._wake:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting (--max-queue {self.max_queue}); retry later")
            self.waiting.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job (its client went away): its rows leave the batch at the next step."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    # ------------------------------------------------------------------ the decode thread
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.waiting and not len(self.batch):
                    self._wake.wait()
                if self._stopping:
                    return
                admitted = self._admit()
            try:
                self._step(admitted)
            except Exception as error:  # a failed step fails the jobs in it, not the server
                failed = {c.job for c in self.choices.values()} | set(admitted)
                self.batch.leave(set(self.batch.keys))  # their state (and a draft model's) is not to be trusted
                self.batch, self.choices = self._new_batch(), {}
                self._fail(failed, error)

    def _new_batch(self) -> RunningBatch:
        """An empty running batch with the server's speculation and prefix sharing."""
        return RunningBatch(self.model, self.eos, self.speculation, share_prefixes=self.share_prefixes)

    def _step(self, admitted: list[Job]) -> None:
        """Advance the running rows, then prefill the admitted jobs; deliver what came out."""
        self._drop_cancelled()
        events = self.batch.advance()
        if admitted:
            events += self._join(admitted)
        self._deliver(events)

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit in the batch, in arrival order (the caller holds the lock)."""
        admitted, room = [], self.max_batch_size - len(self.batch)
        while self.waiting and (self.waiting[0].cancelled or len(self.waiting[0].params) <= room):
            job = self.waiting.popleft()
            if not job.cancelled:
                admitted.append(job)
                room -= len(job.params)
        return admitted

    def _join(self, jobs: list[Job]) -> list[TokenEvent | RowFailed]:
        """Prefill the jobs together (one batched prefill is far cheaper than one per job); if
        that fails, each on its own, so that one bad job fails alone."""
        rows = [RowRequest((job.id, i), job.prompt, p, job.logprobs) for job in jobs for i, p in enumerate(job.params)]
        try:
            events = self.batch.join(rows)
        except Exception as error:
            if len(jobs) == 1:
                self._fail(set(jobs), error)
                return []
            return [event for job in jobs for event in self._join([job])]
        for job in jobs:
            self.prompt_tokens += len(job.prompt)
            for i, p in enumerate(job.params):
                self.choices[(job.id, i)] = _Choice(job, i, RowText(self.tokenizer, p.stop, self.eos))
        return events

    def _deliver(self, events: list[TokenEvent | RowFailed]) -> None:
        """Text per choice; rows that hit a stop string leave; finished jobs get their end. A
        step's events reach the handlers in one hand-over per event loop."""
        stopped, outbox = set(), []
        for event in events:
            choice = self.choices.get(event.key)
            if choice is None:
                continue
            if isinstance(event, RowFailed):  # this row alone could not go on: its job fails, the batch does not
                self._drop_job(choice.job)
                outbox.append((choice.job, AutoDecoError(f"generation failed for this request: {event.message}")))
                continue
            self.generated_tokens += 1
            update, reason = choice.text.take(choice.index, event, len(choice.job.prompt))
            if reason is not None and event.finish_reason is None:
                stopped.add(event.key)
            if update is not None:
                outbox.append((choice.job, update))
            if reason is not None:
                del self.choices[event.key]
                if not any(k[0] == event.key[0] for k in self.choices):
                    outbox.append((choice.job, None))  # every choice of the job has finished
        self.batch.leave(stopped)
        for loop in {job.loop for job, _ in outbox}:
            _send(loop, [(job, item) for job, item in outbox if job.loop is loop])

    def _drop_cancelled(self) -> None:
        gone = {key for key, choice in self.choices.items() if choice.job.cancelled}
        for key in gone:
            del self.choices[key]
        self.batch.leave(gone)

    def _fail(self, jobs: set[Job], error: Exception) -> None:
        """End ``jobs`` with an error event; their rows leave."""
        message = error if isinstance(error, AutoDecoError) else AutoDecoError(f"generation failed: {type(error).__name__}: {error}")
        for job in jobs:
            self._drop_job(job)
            job.put(message)

    def _drop_job(self, job: Job) -> None:
        """Forget a job's choices; its rows leave the batch."""
        for key in [k for k in self.choices if k[0] == job.id]:
            del self.choices[key]
        self.batch.leave({key for key in self.batch.keys if key[0] == job.id})
