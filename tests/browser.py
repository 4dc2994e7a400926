"""Headless Chromium driven through the DevTools protocol, for the tests that need a real browser (the viewer's
page, the notebooks' stored 3D scenes). Debian's package: `apt-get install -y chromium`; tests skip without it.

    with Browser() as browser:              # skips the test (one line) where Chromium is not installed
        page = browser.open("http://127.0.0.1:8080")
        png = page.screenshot()             # (H, W, 3) uint8
        page.requests                       # every URL the page asked for, in order

The flags keep a machine without internet from stalling Chromium on refused connections (no sync, no component
updates, no QUIC, no first-run), and each Browser gets a fresh profile folder.
"""
import base64
import io
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

import numpy as np
import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--hide-scrollbars", "--mute-audio")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab, spoken to over its DevTools websocket. Network requests are recorded as they are sent."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=20)
        self._ids = itertools.count(1)
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self.requests: list[str] = []
        self.console: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.call("Network.enable")
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _read(self) -> None:
        try:
            for message in self._ws:
                data = json.loads(message)
                if data.get("method") == "Network.requestWillBeSent":
                    self.requests.append(data["params"]["request"]["url"])
                elif data.get("method") == "Runtime.consoleAPICalled":
                    self.console.append(" ".join(str(a.get("value", "")) for a in data["params"]["args"]))
                elif "id" in data:
                    with self._cond:
                        self._replies[data["id"]] = data
                        self._cond.notify_all()
        except Exception:  # the socket closed
            pass

    def call(self, method: str, timeout: float = 30.0, **params) -> dict:
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        with self._cond:
            if not self._cond.wait_for(lambda: call_id in self._replies, timeout):
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
            reply = self._replies.pop(call_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def set_content(self, html: str) -> None:
        """Replace the page's document by `html` (as a file opened from disk would be, with no server)."""
        frame_id = self.call("Page.getFrameTree")["frameTree"]["frame"]["id"]
        self.call("Page.setDocumentContent", frameId=frame_id, html=html)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def close(self) -> None:
        self._ws.close()


class Browser:
    """A headless Chromium with its DevTools port; `open(url)` gives a Page. Skips the calling test where
    Chromium is not installed."""

    def __init__(self, width: int = 800, height: int = 600):
        self.width, self.height = width, height
        path = chromium_path()
        if path is None:
            pytest.skip("Chromium not installed (apt-get install -y chromium)")
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._process = subprocess.Popen(
            [path, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.endpoint = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self._process.stderr.readline()
            match = re.search(r"DevTools listening on ws://([\d.]+:\d+)/", line or "")
            if match:
                self.endpoint = match.group(1)
                break
            if not line and self._process.poll() is not None:
                break
        if self.endpoint is None:
            self.close()
            raise RuntimeError("Chromium started but never said where its DevTools port is")
        threading.Thread(target=self._process.stderr.read, daemon=True).start()  # keep its pipe drained
        self._pages: list[Page] = []

    def open(self, url: str = "about:blank") -> Page:
        targets = json.load(urllib.request.urlopen(f"http://{self.endpoint}/json/list", timeout=10))
        target = next(t for t in targets if t.get("type") == "page")
        page = Page(target["webSocketDebuggerUrl"])
        page.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        self._pages.append(page)
        if url != "about:blank":
            page.navigate(url)
        return page

    def close(self) -> None:
        for page in getattr(self, "_pages", []):
            page.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
