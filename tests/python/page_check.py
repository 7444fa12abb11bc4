"""Opens pathguard's page in headless Chromium over the DevTools protocol, uploads one image
through the page's file input, waits for the verdict and saves a screenshot.

Usage: python page_check.py CHROMIUM URL IMAGE SCREENSHOT.png
Prints one JSON object: what the page shows (class, score, verdict text, stats line).
"""

import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

chromium, url, image, screenshot = sys.argv[1:5]
profile = tempfile.mkdtemp(prefix="pathguard-chromium-")
browser = subprocess.Popen(
    [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
     "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}",
     "--window-size=1280,1100", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
try:
    port = None
    deadline = time.time() + 60
    while port is None and time.time() < deadline:
        line = browser.stderr.readline()
        if not line and browser.poll() is not None:
            raise SystemExit(f"chromium exited with {browser.returncode}")
        found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if found:
            port = int(found.group(1))
    assert port, "chromium did not print its DevTools address"
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
    page = next(t for t in targets if t["type"] == "page")
    ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
    counter = [0]

    def call(method, **params):
        counter[0] += 1
        ws.send(json.dumps({"id": counter[0], "method": method, "params": params}))
        while True:
            message = json.loads(ws.recv())
            if message.get("id") == counter[0]:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(expression):
        return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(expression, seconds):
        until = time.time() + seconds
        while time.time() < until:
            value = evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise SystemExit(f"timed out waiting for {expression}")

    call("Page.enable")
    call("Page.navigate", url=url)
    wait_for("document.readyState === 'complete' && !!document.getElementById('file')", 30)
    root = call("DOM.getDocument")["root"]["nodeId"]
    node = call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    call("DOM.setFileInputFiles", nodeId=node, files=[os.path.abspath(image)])
    state = wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state", 60)
    shown = evaluate("""JSON.stringify({
        state: document.body.dataset.state,
        error: document.getElementById('error').textContent,
        predicted_class: Number(document.getElementById('verdict').dataset.predictedClass),
        score: Number(document.getElementById('score').dataset.score),
        verdict: document.getElementById('verdict').textContent,
        stats: document.getElementById('stats').textContent})""")
    # Let the stats panel refresh after the screening, then take the picture.
    time.sleep(2.5)
    shown = json.loads(shown)
    shown["stats"] = evaluate("document.getElementById('stats').textContent")
    shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    with open(screenshot, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    print(json.dumps(shown))
finally:
    browser.kill()
    browser.wait()
