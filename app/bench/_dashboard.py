"""The load of a dashboard on a session: its process and a connected headless page.

``eegs bench presentation --with-dashboard`` and ``eegs bench acquisition
--with-dashboard`` run their measurement twice in one run, without and then with
:class:`DashboardLoad`, and report the ratio. The page is Debian's Chromium driven by
Playwright (the test extra; no browser is ever downloaded).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.bench._ports import socket_free_port
from app.dashboard import TOKEN_ENV

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_TOKEN = "bench-" + "x" * 16


def dashboard_protocol(path: Path, eeg: str, markers: str, dead_port: int) -> Path:
    """Write a protocol for the bench's dashboard: its streams, and no worker to ask."""
    path.write_text(
        f'[streams]\neeg = "{eeg}"\nmarkers = "{markers}"\n'
        f'[generation]\nendpoint = "tcp://127.0.0.1:{dead_port}"\n'
    )
    return path


def eeg_outlet(name: str, stop: threading.Event, n_ch: int = 64, sfreq: float = 250.0) -> None:
    """Stream noise like an amplifier (what the dashboard's trace and quality work on)."""
    import pylsl

    from workers.lsl_clock import make_eeg_info

    out = pylsl.StreamOutlet(make_eeg_info(name, [f"EEG{i:03d}" for i in range(n_ch)], sfreq))
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 10, (int(sfreq) * 2, n_ch)).astype(np.float32)
    chunk, k = max(1, int(sfreq / 50)), 0
    t0 = time.monotonic()
    while not stop.is_set():
        out.push_chunk(noise[k % len(noise) :][:chunk].tolist())
        k += chunk
        stop.wait(max(0.0, t0 + k / sfreq - time.monotonic()))


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError:
        return 0


class DashboardLoad:
    """``eegs dashboard`` on a session plus a headless Chromium page showing it."""

    def __init__(self, session: Path, protocol: Path, log: Path) -> None:
        self.session, self.protocol, self.log = session, protocol, log
        self.proc: subprocess.Popen | None = None
        self._pw = self._browser = self.page = None
        self.stats: dict[str, Any] = {}

    def __enter__(self) -> DashboardLoad:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as err:
            raise RuntimeError(
                "--with-dashboard drives a browser with playwright (pip install -e .[test])"
            ) from err
        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"--with-dashboard needs {CHROMIUM} (apt-get install chromium)")
        with socket_free_port() as port:
            pass
        argv = [sys.executable, "-m", "app.cli", "dashboard", "--session", str(self.session)]
        argv += ["--protocol", str(self.protocol), "--port", str(port)]
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, TOKEN_ENV: _TOKEN},
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}/?token={_TOKEN}"
        deadline = time.monotonic() + 60
        while _status(url) != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not serve: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.page = self._browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.goto(url)
        self.page.wait_for_function("window.eegs.messages > 0", timeout=30_000)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.page is not None:
                lat = np.asarray(self.page.evaluate("window.eegs.latencies"))
                self.stats = {
                    "page_messages": self.page.evaluate("window.eegs.messages"),
                    "page_eeg_samples": self.page.evaluate("window.eegs.eegSamples"),
                    "page_update_delay_ms": {
                        "n": int(lat.size),
                        "p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
                        "p95": round(float(np.percentile(lat, 95)), 1) if lat.size else None,
                    },
                }
        finally:
            if self._browser is not None:
                self._browser.close()
            if self._pw is not None:
                self._pw.stop()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)


def count_ratio(with_dash: int, without: int) -> dict[str, Any]:
    """Ratio of two event counts over the same exposure, with its exact 95 % interval.

    Dropped frames are rare events (about 1 % of frames here): a run's count varies by
    its square root, so a ratio of two counts of 50 spans 0.7-1.5 with no effect at all.
    Conditional on their sum, the count with the dashboard is binomial with
    p = R / (1 + R); Clopper-Pearson's interval on p gives R's.
    """
    from scipy.stats import binomtest

    n = int(with_dash) + int(without)
    if n == 0:
        return {"ratio": None, "ci95": None}
    ci = binomtest(int(with_dash), n).proportion_ci(0.95, method="exact")

    def odds(p: float) -> float | None:
        return None if p >= 1 else round(p / (1 - p), 3)

    return {"ratio": ratio(with_dash, without), "ci95": [odds(ci.low), odds(ci.high)]}


def quantile_ratio(with_dash: Sequence[float], without: Sequence[float], q: float) -> dict:
    """Ratio of the ``q``-th percentiles of two samples, with a bootstrap 95 % interval.

    Epoch latencies are resampled within each arm (scipy's percentile bootstrap, 2000
    resamples, a fixed seed): the interval says how far a p95 of a few hundred epochs can
    move by chance alone, which one ratio does not.
    """
    from scipy.stats import bootstrap

    b = np.asarray(with_dash, dtype=np.float64)
    a = np.asarray(without, dtype=np.float64)
    if not a.size or not b.size:
        return {"ratio": None, "ci95": None}

    def stat(b, a, axis=-1):
        return np.percentile(b, q, axis=axis) / np.percentile(a, q, axis=axis)

    res = bootstrap(
        (b, a), stat, n_resamples=2000, method="percentile", vectorized=True, random_state=0
    )
    ci = res.confidence_interval
    return {
        "ratio": round(float(stat(b, a)), 3),
        "ci95": [round(float(ci.low), 3), round(float(ci.high), 3)],
    }


def ratio(with_dash: float | None, without: float | None) -> float | None:
    """The value with the dashboard over the value without; None without a baseline."""
    if with_dash is None or without is None or without == 0:
        return None
    return round(float(with_dash) / float(without), 3)
