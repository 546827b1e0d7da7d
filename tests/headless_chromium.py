"""Open a page in a real headless Chromium and report what a reader's browser would see.

Chromium is driven over the Chrome DevTools Protocol on ``--remote-debugging-pipe``: the
browser reads commands from file descriptor 3 and writes replies and events to descriptor 4,
each a JSON message ended by a NUL byte. No port, no websocket, no extra package.

``load_page(path)`` navigates to the file, waits for the load event and returns every image's
load state, the console errors and exceptions, the failed requests and every URL requested.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",  # needed as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--window-size=1280,1000",
    "--remote-debugging-pipe",
]

_IMAGES_JS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({
    alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
    naturalHeight: i.naturalHeight, src: i.currentSrc.slice(0, 40)})),
  charset: document.characterSet,
  compatMode: document.compatMode,
  title: document.title,
  scripts: document.scripts.length,
  links: Array.from(document.querySelectorAll('link[href]')).map(l => l.href),
})"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@dataclass
class PageReport:
    url: str
    images: list[dict] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    charset: str = ""
    compat_mode: str = ""
    title: str = ""
    scripts: int = 0
    links: list[str] = field(default_factory=list)

    @property
    def broken_images(self) -> list[dict]:
        return [i for i in self.images if not (i["complete"] and i["naturalWidth"] > 0)]


class ChromiumError(RuntimeError):
    pass


def _high_fd(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or above, so that moving it to 3 or 4 clobbers nothing."""
    hi = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return hi


class _Pipe:
    def __init__(self, executable: str, user_data_dir: str):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        to_chrome_r, from_chrome_w = _high_fd(to_chrome_r), _high_fd(from_chrome_w)

        def child_fds():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(3, 4),
            preexec_fn=child_fds,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        wanted = self.next_id
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == wanted:
                if "error" in m:
                    raise ChromiumError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_event(self, method: str, session: str | None, timeout: float = 30.0) -> dict:
        for e in self.events:
            if e["method"] == method and e.get("sessionId") == session:
                return e
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if "method" in m:
                self.events.append(m)
                if m["method"] == method and m.get("sessionId") == session:
                    return m

    def drain(self, seconds: float) -> None:
        """Collect the events that arrive within ``seconds`` (late console messages)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                m = self._read(deadline)
                if "method" in m:
                    self.events.append(m)
        except TimeoutError:
            pass

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.from_chrome], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.from_chrome, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise ChromiumError(f"Chromium closed the pipe (exit {self.proc.poll()}): {err}")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            os.write(
                self.to_chrome, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0"
            )
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_chrome, self.from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.stderr:
            self.proc.stderr.close()


def load_page(
    path: Path, executable: str, timeout: float = 60.0, screenshot: Path | None = None
) -> PageReport:
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        chrome = _Pipe(executable, profile)
        try:
            target = chrome.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            session = chrome.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                chrome.send(f"{domain}.enable", session=session)
            chrome.send("Page.navigate", {"url": url}, session=session)
            chrome.wait_event("Page.loadEventFired", session, timeout=timeout)
            chrome.drain(0.5)
            value = chrome.send(
                "Runtime.evaluate",
                {"expression": _IMAGES_JS, "returnByValue": True},
                session=session,
            )["result"]["value"]
            page = json.loads(value)
            if screenshot is not None:  # the whole page, for a person to look at
                shot = chrome.send(
                    "Page.captureScreenshot",
                    {"format": "png", "captureBeyondViewport": True},
                    session=session,
                )
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        finally:
            chrome.close()
    rep = PageReport(
        url=url,
        images=page["images"],
        charset=page["charset"],
        compat_mode=page["compatMode"],
        title=page["title"],
        scripts=page["scripts"],
        links=page["links"],
    )
    for e in chrome.events:
        method, p = e["method"], e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            rep.console_errors.append(f"console.{p['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            rep.console_errors.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            rep.console_errors.append(f"{p['entry'].get('source')}: {p['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            rep.requested.append(p["request"]["url"])
        elif method == "Network.loadingFailed":
            rep.failed_requests.append(f"{p.get('type')}: {p.get('errorText')}")
        elif method == "Network.responseReceived" and p["response"].get("status", 0) >= 400:
            rep.failed_requests.append(f"{p['response']['url']}: {p['response']['status']}")
    return rep
