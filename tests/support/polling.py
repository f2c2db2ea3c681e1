"""A browser left open on the dashboard, for the benches (bench/ingest, bench/e2e --http-poll): GET / every
second in a thread, counting answers and failures."""

from __future__ import annotations

import threading
import urllib.request


class DashboardPoller:
    """GET / (the overview, the heaviest page) every `interval` seconds until the `with` block ends."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self.url, self.interval = f"http://127.0.0.1:{port}/", interval
        self.polls, self.failures = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DashboardPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    response.read()
                self.polls += 1
            except OSError:
                self.failures += 1
            self._stop.wait(self.interval)
