"""modules/call_queue.py: queue_lock, held by the Web-UI around each generation."""

import threading

from modules.host_calls import record


class RecordingLock:
    def __init__(self):
        self._lock = threading.Lock()

    def acquire(self, blocking=True, timeout=-1):
        got = self._lock.acquire(blocking, timeout)
        if got:
            record("acquire")
        return got

    def release(self):
        record("release")
        self._lock.release()

    def locked(self):
        return self._lock.locked()

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()


queue_lock = RecordingLock()
