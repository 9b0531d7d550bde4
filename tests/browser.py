"""Headless Chromium driven over the DevTools protocol, for tests that look at a page as a user does.

Debian's ``chromium`` renders the page; aiohttp (installed with Ray's dashboard) speaks
the protocol: navigate, run JavaScript in the page (read what is rendered, click), and
take screenshots. Each Browser has a fresh profile, as a first-time user has.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import need
from servers import free_port


def chromium_path() -> str:
    """Debian's chromium; skips the test (fails it under CI=true) when absent."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    need(path, "Debian's chromium is not installed (apt-get install chromium)")
    return str(path)


class Browser:
    """One headless Chromium with one tab; use as a context manager."""

    def __init__(self, width: int = 1600, height: int = 1000) -> None:
        self.width, self.height = width, height
        self.port = free_port()
        self.profile = Path(tempfile.mkdtemp(prefix="tune_prune_chromium_"))
        self.proc: subprocess.Popen | None = None
        self.loop = asyncio.new_event_loop()
        self._id = 0

    def __enter__(self) -> "Browser":
        self.proc = subprocess.Popen(
            [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", f"--user-data-dir={self.profile}", f"--remote-debugging-port={self.port}",
             "--remote-debugging-address=127.0.0.1", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        ws_url = self._page_socket(timeout=60)
        self.loop.run_until_complete(self._connect(ws_url))
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.loop.run_until_complete(self._close())
        finally:
            self.loop.close()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def _page_socket(self, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"chromium did not open its DevTools port within {timeout}s")

    async def _connect(self, url: str) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, max_msg_size=0)

    async def _close(self) -> None:
        if getattr(self, "ws", None) is not None:
            await self.ws.close()
        if getattr(self, "session", None) is not None:
            await self.session.close()

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        my_id = self._id
        await self.ws.send_str(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == my_id:  # events in between are not needed
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command, e.g. call("Page.navigate", url=...)."""
        return self.loop.run_until_complete(asyncio.wait_for(self._call(method, params), timeout=120))

    def js(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited); its JSON-able value."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 90, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; its value. The UI renders asynchronously."""
        deadline = time.time() + timeout
        value = None
        while time.time() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:
                value = None  # page still loading
            if value:
                return value
            time.sleep(0.5)
        text = self.js("document.body ? document.body.innerText.slice(0, 3000) : ''")
        raise AssertionError(f"page never showed {what or expression} within {timeout}s; it shows:\n{text}")

    def text(self) -> str:
        return self.js("document.body.innerText")

    def click_text(self, text: str, selector: str = "button, a, span, div[role=button]") -> bool:
        """Click the innermost element matching ``selector`` whose own text is ``text``."""
        return bool(self.js(
            f"(() => {{ const els = [...document.querySelectorAll({json.dumps(selector)})]"
            f".filter(e => e.innerText && e.innerText.trim() === {json.dumps(text)});"
            " if (!els.length) return false; els[els.length - 1].click(); return true; })()"))

    def press(self, text: str, selector: str = "button") -> None:
        """A real mouse click (press and release) on the last ``selector`` element whose text is ``text``.

        Menus of MLflow's design system open on pointer events, which a script's click() does not send.
        """
        box = self.js(
            f"(() => {{ const els = [...document.querySelectorAll({json.dumps(selector)})]"
            f".filter(e => e.innerText && e.innerText.trim() === {json.dumps(text)});"
            " if (!els.length) return null; const r = els[els.length - 1].getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        if box is None:
            raise AssertionError(f"no {selector} reading {text!r} on the page")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """A PNG of the viewport (or of the whole scrollable page)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


class MlflowUi:
    """`mlflow ui` on a store, on 127.0.0.1 and a free port, without MLflow's job runner (2 GB less)."""

    def __init__(self, backend_uri: str, log: Path) -> None:
        import sys

        self.backend_uri, self.log = backend_uri, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mlflow = str(Path(sys.executable).parent / "mlflow")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "MlflowUi":
        import os

        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [self.mlflow, "ui", "--backend-store-uri", self.backend_uri, "--host", "127.0.0.1",
             "--port", str(self.port)],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow ui did not answer /health within 180s: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        import os
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
