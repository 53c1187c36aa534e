"""Screenshot of the page `gptclf serve RUN` shows at /, for the README (docs/img/serve_page.png).

    python docs/screenshot.py runs/main docs/img/serve_page.png

Serves RUN in-process (the app `gptclf serve` runs, on an ephemeral loopback port), classifies
two texts in headless Chromium (the system's, as in tests/test_ui.py) and saves the page,
reduced to 128 colours to keep the file small.
"""

from __future__ import annotations

import io
import shutil
import sys

from PIL import Image
from playwright.sync_api import sync_playwright

from gptclf import Classifier
from gptclf.server import create_app, running

TEXTS = [
    "Are we still on for lunch tomorrow? I can pick you up at noon.",
    "WINNER!! You have been selected for a £900 prize. Call 09061701461 now to claim, code KL341.",
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
ARGS += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARGS += ["--no-proxy-server", "--disable-dev-shm-usage"]


def main(run: str, out: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with running(create_app(Classifier.load(run))) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector("#card dt")
        for i, text in enumerate(TEXTS):
            page.fill("#text", text)
            page.press("#text", "Enter")
            page.wait_for_function(
                "n => document.querySelectorAll('#history li').length === n", arg=i + 1
            )
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        png = page.screenshot(full_page=True)
        browser.close()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(128).save(out, optimize=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
