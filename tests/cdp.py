"""A small driver for Debian's headless Chromium over the Chrome DevTools Protocol, for the browser test.

Why this and not Selenium or Playwright: both want a browser or driver binary of their own (downloads are not
possible here), while the DevTools Protocol is one WebSocket that aiohttp, already a dependency, speaks. Only
what the test needs: open a page, evaluate JavaScript, wait for a condition, and click like a person does
(real mouse events at the element's position, so a hidden, covered or disabled button is not "clicked").

Protocol reference: chromedevtools.github.io/devtools-protocol (Target, Page, Runtime, Input domains).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp

# Flags: headless without a sandbox (tests run as root in a container), and nothing that reaches the network
# on its own (this machine refuses background connections; they would only slow the start).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
         "--mute-audio", "--remote-debugging-port=0"]


def chromium_path() -> str:
    """Debian's chromium (``apt-get install chromium``; ``.ci/run`` installs it when missing)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("Chromium is not installed: apt-get install -y chromium (.ci/run does this)")
    return found


class CdpError(Exception):
    """A DevTools command failed, or JavaScript threw."""


class Page:
    """One browser tab, over its own DevTools WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.errors: list[str] = []  # uncaught exceptions and console.error lines of the page, for diagnostics
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            future = self._waiting.pop(data.get("id"), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                self.errors.append(data["params"]["exceptionDetails"].get("exception", {}).get("description", "?"))
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in data["params"]["args"]))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CdpError("the browser closed the connection"))

    async def call(self, method: str, timeout: float = 10, **params: Any) -> dict:
        """Send one DevTools command; its ``result``. Raises CdpError on a protocol error."""
        command_id = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        await self._ws.send_json({"id": command_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def goto(self, url: str, timeout: float = 10) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", timeout)

    async def wait_for(self, expression: str, timeout: float = 10, interval: float = 0.1) -> Any:
        """Poll until the expression is truthy; its value. Raises TimeoutError naming it (and page errors)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"not true within {timeout} s: {expression}; page errors: {self.errors}")
            await asyncio.sleep(interval)

    async def text(self, selector: str) -> str:
        return await self.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")

    async def click(self, selector: str, timeout: float = 10) -> None:
        """Wait until ``selector`` is a visible, enabled element, then press and release the left mouse button
        over its centre, as a person would."""
        box = await self.wait_for(f"""(() => {{
            const node = document.querySelector({json.dumps(selector)});
            if (!node || node.disabled) return null;
            node.scrollIntoView({{block: "center"}});
            const r = node.getBoundingClientRect();
            if (!r.width || !r.height) return null;
            const x = r.left + r.width / 2, y = r.top + r.height / 2;
            const top = document.elementFromPoint(x, y);
            return top === node || node.contains(top) ? {{x, y}} : null;
        }})()""", timeout)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left",
                            clickCount=0 if kind == "mouseMoved" else 1)

    async def choose(self, selector: str, value: str) -> None:
        """Pick ``value`` in a ``<select>`` (a native drop-down list cannot be opened with mouse events in
        headless mode, so the choice is made as the list would make it: value, then a ``change`` event)."""
        await self.wait_for(f"[...(document.querySelector({json.dumps(selector)}) || {{options: []}}).options]"
                            f".some(o => o.value === {json.dumps(value)})")
        await self.evaluate(f"""(() => {{
            const node = document.querySelector({json.dumps(selector)});
            node.value = {json.dumps(value)};
            node.dispatchEvent(new Event("change", {{bubbles: true}}));
        }})()""")

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()


class Chromium:
    """``async with Chromium(tmp_path) as browser: page = await browser.new_page(url)``: a headless Chromium
    with its own profile under ``folder``, stopped (and its profile left for the test's tmp_path) on exit."""

    def __init__(self, folder: Path, start_timeout: float = 45) -> None:
        self.folder = folder
        self.start_timeout = start_timeout
        self.process: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self.port = 0
        self.pages: list[Page] = []

    async def __aenter__(self) -> Chromium:
        profile = self.folder / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        self.log = (self.folder / "chromium.log").open("wb")
        self.process = await asyncio.create_subprocess_exec(
            chromium_path(), *FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        # Chromium writes the port it chose (and the browser's WebSocket path) to this file once it listens.
        port_file = profile / "DevToolsActivePort"
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                await self._stop()
                raise RuntimeError(f"Chromium did not start; see {self.folder / 'chromium.log'}")
            await asyncio.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def new_page(self, url: str) -> Page:
        """Open ``url`` in a new tab and wait until it has loaded."""
        async with self.http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
            target = await response.json()
        page = Page(await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0))
        self.pages.append(page)
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        await page.goto(url)
        return page

    async def _stop(self) -> None:
        for page in self.pages:
            await page.close()
        if self.http is not None:
            await self.http.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.log.close()

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()
