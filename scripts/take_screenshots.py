"""Screenshots of the Dagster UI for the README, taken in headless Chromium.

Runs the main job for every market on the embedded stack into a throwaway instance, starts `dagster dev` on it,
and captures the asset graph and the `top_tracks` materialization page into docs/.

    .venv/bin/pip install -e '.[docs]'          # playwright (driver only; it uses Debian's chromium)
    apt-get install chromium
    .venv/bin/python scripts/take_screenshots.py
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
PAGES = {
    "docs/asset-graph.png": "/asset-groups/toptracks",
    "docs/top-tracks-materialization.png": "/assets/top_tracks?view=events&partition=US",
    "docs/raw-top-tracks-materialization.png": "/assets/raw_top_tracks?view=events&partition=US",
}
# Without the background-networking flags Chromium keeps dialling Google on this closed network.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def capture(chromium: str, base_url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        for target, path in PAGES.items():
            page.goto(base_url + path)
            page.wait_for_load_state("networkidle")
            skip = page.get_by_role("button", name="Skip")  # the UI's first-visit newsletter dialog
            if skip.count():
                skip.first.click()
            page.wait_for_timeout(3000)
            page.screenshot(path=str(REPO / target))
            print(f"wrote {target}")
        browser.close()


def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="toptracks-screens-"))
    os.environ["DAGSTER_HOME"] = str(home)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    os.environ["TOPTRACKS_RAW_DIR"] = str(home / "raw")
    os.environ["TOPTRACKS_LOCAL_DIR"] = str(home / "local")

    from toptracks_dagster.dev import stack

    os.environ.update(stack.ensure_local_stack())
    try:
        from dagster import DagsterInstance

        from toptracks_dagster.definitions import defs

        job = defs.resolve_job_def("top_tracks_job")
        with DagsterInstance.get() as instance:
            for market in ("US", "CA"):
                assert job.execute_in_process(instance=instance, partition_key=market).success
        port = 3333
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            for _ in range(120):
                try:
                    if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                        break
                except requests.RequestException:
                    time.sleep(1)
            time.sleep(5)  # let the code location finish loading
            capture(chromium, f"http://127.0.0.1:{port}")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
