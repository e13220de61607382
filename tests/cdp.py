"""A small driver for headless Chromium over the Chrome DevTools Protocol (websocket-client from PyPI).

Used by the browser tests of the listening page and of the report: navigate, evaluate JavaScript, click
with real mouse events (user gestures), wait for a condition, take a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request


def find_chromium() -> str | None:
    for c in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
              shutil.which("google-chrome")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if find_chromium() is None:
        return "Chromium is not installed (apt-get install -y chromium); browser test skipped"
    try:
        import websocket  # noqa: F401
    except ImportError:
        return "websocket-client is not installed (pip install -e '.[test]'); browser test skipped"
    return None


class CDPError(RuntimeError):
    pass


class Chromium:
    def __init__(self, user_data_dir, width: int = 1280, height: int = 800, timeout: float = 60.0):
        import websocket

        self.timeout = timeout
        exe = find_chromium()
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
               "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={user_data_dir}",
               "--autoplay-policy=no-user-gesture-required", "--mute-audio", f"--window-size={width},{height}",
               "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        found = threading.Event()
        self._ws_url = None

        def drain():
            for line in self.proc.stderr:
                self.stderr.append(line)
                if "DevTools listening on " in line and self._ws_url is None:
                    self._ws_url = line.split("DevTools listening on ", 1)[1].strip()
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(timeout):
            self.close()
            raise CDPError("Chromium did not start its DevTools endpoint:\n" + "".join(self.stderr[-30:]))
        port = self._ws_url.split("//", 1)[1].split("/", 1)[0]
        deadline = time.time() + timeout
        page = None
        while page is None and time.time() < deadline:
            with urllib.request.urlopen(f"http://{port}/json/list", timeout=10) as r:
                page = next((t for t in json.loads(r.read()) if t.get("type") == "page"), None)
            if page is None:
                time.sleep(0.1)
        if page is None:
            self.close()
            raise CDPError("Chromium has no page target")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params):
        self._id += 1
        mid = self._id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def eval(self, expr: str, await_promise: bool = False):
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in r:
            raise CDPError(f"{expr[:80]}: {r['exceptionDetails'].get('exception', r['exceptionDetails'])}")
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float | None = None, what: str = ""):
        deadline = time.time() + (timeout or self.timeout)
        while time.time() < deadline:
            v = self.eval(expr)
            if v:
                return v
            time.sleep(0.05)
        raise CDPError(f"timed out waiting for {what or expr}")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        time.sleep(0.05)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", what=f"{url} to load")

    def click(self, selector: str) -> None:
        """A real mouse click (a user gesture) at the centre of the element."""
        rect = self.eval(f"(function(){{var e=document.querySelector({json.dumps(selector)});"
                         "if(!e) return null; e.scrollIntoView({block:'center'}); var r=e.getBoundingClientRect();"
                         "return {x:r.left+r.width/2, y:r.top+r.height/2, w:r.width, h:r.height};})()")
        if not rect or rect["w"] <= 0:
            raise CDPError(f"nothing to click at {selector}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=rect["x"], y=rect["y"], button="left",
                      clickCount=1 if kind != "mouseMoved" else 0)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def console_errors(self) -> list[str]:
        out = []
        for ev in self.events:
            if ev.get("method") == "Runtime.exceptionThrown":
                out.append(str(ev["params"]["exceptionDetails"].get("exception", {}).get("description")))
            if ev.get("method") == "Runtime.consoleAPICalled" and ev["params"].get("type") in ("error", "warning"):
                out.append(" ".join(str(a.get("value")) for a in ev["params"].get("args", [])))
        return out

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
