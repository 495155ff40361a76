"""Concurrent queries -> one device call: a worker thread that batches requests.

Each request is put on a queue with a future; one worker thread takes the
first waiting request, then every other one already waiting (up to
`max_batch`), and answers them all with one call of `run_batch`. While a
batch runs, new requests queue up and form the next batch, so under load the
batches grow by themselves and a lone query waits for nobody.

Under load (the last batch held more than one query) the worker also waits
until the first request of a batch has been queued for `max_wait_s`: when a
large batch is answered, its clients send their next queries within a few
milliseconds of each other, and without the wait the worker would take the
first of them alone and leave the rest for the next call. A lone client never
waits: its batches hold one query.

`run_batch` gets the requests as they were submitted (undecoded uploads, for
the server), so the work per query that batches well (decoding and resizing
many uploads in one call) happens here, off the event loop. A result that is
an Exception fails its own request only (an unreadable upload), and a failing
batch fails its own requests only; the worker keeps serving.
"""
import asyncio
import concurrent.futures
import queue
import threading
import time
from typing import Any, Callable, Sequence


class Batcher:
  """run_batch(items) -> one result (or an Exception) per item, in order."""

  def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]],
               max_batch: int = 64, max_wait_s: float = 0.0,
               name: str = 'query-batcher'):
    if max_batch < 1:
      raise ValueError(f'max_batch={max_batch}; give a positive number.')
    if max_wait_s < 0:
      raise ValueError(f'max_wait_s={max_wait_s}; give 0 (no wait) or more seconds.')
    self._run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
    self._queue: queue.Queue = queue.Queue()
    self._stop = threading.Event()
    self.batches = self.queries = self.largest = 0
    self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
    self._thread.start()

  @property
  def native_id(self) -> int:
    """The worker's OS thread id (to profile it: /proc/<pid>/task/<id>)."""
    return self._thread.native_id

  def submit(self, item: Any) -> concurrent.futures.Future:
    if self._stop.is_set():
      raise RuntimeError('The batcher is closed.')
    future: concurrent.futures.Future = concurrent.futures.Future()
    self._queue.put((item, future, time.monotonic()))
    return future

  async def __call__(self, item: Any) -> Any:
    """Awaits the answer to `item` without blocking the event loop."""
    return await asyncio.wrap_future(self.submit(item))

  def stats(self) -> dict:
    return {'batches': self.batches, 'queries': self.queries,
            'largest_batch': self.largest,
            'mean_batch': self.queries / self.batches if self.batches else 0.0}

  def close(self) -> None:
    self._stop.set()
    self._queue.put(None)
    self._thread.join(timeout=10)

  def _gather(self, first: tuple, wait: bool) -> list:
    """`first` and the requests after it: those waiting now, and with `wait`
    those that come until `first` has been queued for max_wait_s."""
    batch = [first]
    deadline = first[2] + self.max_wait_s
    while len(batch) < self.max_batch:
      left = deadline - time.monotonic() if wait else 0.0
      try:
        entry = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
      except queue.Empty:
        break
      if entry is None:
        self._stop.set()
        break
      batch.append(entry)
    return batch

  def _loop(self) -> None:
    last_size = 1
    while not self._stop.is_set():
      first = self._queue.get()
      if first is None:
        break
      batch = self._gather(first, wait=last_size > 1 and self.max_wait_s > 0)
      items = [item for item, _, _ in batch]
      try:
        results = list(self._run_batch(items))
        if len(results) != len(items):
          raise RuntimeError(f'run_batch gave {len(results)} results for {len(items)} '
                             'queries.')
      except Exception as e:  # noqa: BLE001  (a failing batch must not kill the worker)
        results = [e] * len(items)
      last_size = len(items)
      self.batches += 1
      self.queries += len(items)
      self.largest = max(self.largest, len(items))
      for (_, future, _), result in zip(batch, results):
        if isinstance(result, Exception):
          future.set_exception(result)
        else:
          future.set_result(result)
