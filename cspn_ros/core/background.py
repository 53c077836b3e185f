"""One background thread running one job at a time, off a latency-critical thread.

A job submitted while the previous one still runs is skipped (the caller learns it and counts
it), so the submitting thread never waits and no backlog builds up: the completion node scores
its self-check there after publishing (core.selfcheck).
"""
from __future__ import annotations

import threading
from typing import Callable, Optional


class BackgroundWorker:
    """name: the thread's name; on_error(error): called (on the worker thread) with an
    exception a job raised, the worker then goes on with the next job."""

    def __init__(self, name: str, on_error: Callable[[Exception], None]) -> None:
        self.on_error = on_error
        self.jobs_done = 0
        self.jobs_skipped = 0
        self._job: Optional[Callable[[], None]] = None
        self._busy = False
        self._stopping = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> bool:
        """Run job() on the worker thread; False (job dropped, counted) while an earlier job is
        still waiting or running, or once stopped."""
        with self._changed:
            if self._busy or self._stopping:
                self.jobs_skipped += 1
                return False
            self._job, self._busy = job, True
            self._changed.notify_all()
        return True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the submitted job to finish; True when idle."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._busy, timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Refuse new jobs, let the submitted one finish, end the thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._job is not None or self._stopping)
                job, self._job = self._job, None
                if job is None:
                    return
            try:
                job()
            except Exception as error:  # a job's failure must not end the worker
                self.on_error(error)
            with self._changed:
                self._busy = False
                self.jobs_done += 1
                self._changed.notify_all()
