"""`tokentrim demo --preset toy` served on a free localhost port and used in headless Chromium (Debian's chromium
+ chromium-driver, driven by selenium): Generate streams the video and the drift plot, the downloads are real
files, a bad input shows its message, Cancel stops a run, and the stopped server leaves no files behind.

`TOKENTRIM_DEMO_SCREENSHOT=docs/demo.png` also saves the screenshot of the finished side-by-side run there (the
README's picture)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# No first-run, sync or update traffic: the network is closed here, and a fresh profile per run.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1300"]  # fmt: skip
START_S, RUN_S = 180, 120  # generous: 2 shared cores also run the suite's other tests in CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The demo as a subprocess, its output collected by a thread."""

    def __init__(self, tmp: Path):
        self.tmp = tmp  # its TMPDIR: the folder the demo owns is made in here
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.lines: list[str] = []
        script = Path(sys.executable).with_name("tokentrim")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "tokentrim.app.cli"]
        # One torch thread: on 2 shared cores, with Chromium beside it, more threads only contend.
        env = {**os.environ, "TMPDIR": str(tmp)}
        self.proc = subprocess.Popen([*command, "demo", "--preset", "toy", "--port", str(self.port)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + START_S
        while self.url not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"tokentrim demo did not start:\n{self.output()}")
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("demo-server"))
    server.wait_until_serving()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})  # fmt: skip
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "demo-generate"))
    return browser


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def status(driver) -> str:
    return css(driver, "#demo-status").text


def type_into(driver, selector: str, text: str) -> None:
    """Replace an input's text the way a person does (select all, type, leave the field)."""
    from selenium.webdriver.common.keys import Keys

    field = css(driver, selector)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(text)
    field.send_keys(Keys.TAB)


def wait_for(driver, condition, timeout: float = RUN_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def page_text(driver) -> str:
    return css(driver, "body").text


def test_generate_streams_the_video_and_the_drift_plot(page, downloads, tmp_path):
    css(page, "#demo-side input").click()  # baseline and TokenTrim side by side
    type_into(
        page, "#demo-tokentrim-lam input", "0.5"
    )  # lower than the paper's 2: prunes are likely in 30 frames
    css(page, "#demo-generate").click()
    # While it runs, the status and the live images change block by block.
    seen, previews = [], set()
    deadline = time.monotonic() + RUN_S
    while not status(page).startswith("Done") and time.monotonic() < deadline:
        text = status(page)
        if text.startswith("Generating") and (not seen or seen[-1] != text):
            seen.append(text)
        previews |= {
            img.get_attribute("src") for img in page.find_elements("css selector", "#demo-live-1 img")
        }
    assert status(page).startswith("Done"), status(page)
    assert len(seen) >= 2 and len(previews) >= 2, (seen, previews)
    # The finished videos play in the page; the plot is drawn; TokenTrim's prunes are marked.
    for i in (0, 1):
        ready = f"const v = document.querySelector('#demo-video-{i} video'); return v && v.readyState >= 1 && v.videoWidth"
        assert wait_for(page, lambda d, script=ready: d.execute_script(script), 30) == 256
    plot = css(page, "#demo-plot img")
    assert (
        plot.get_attribute("src").startswith("data:image/png")
        and page.execute_script("return arguments[0].naturalWidth", plot) > 300
    )
    assert "Error" not in page_text(page) and "Traceback" not in page_text(page)
    # The downloads are the run's files.
    css(page, "#demo-log-1").click()
    css(page, "#demo-mp4-1").click()
    wait_for(page, lambda d: {p.name for p in downloads.iterdir()} >= {"tokentrim.json", "tokentrim.mp4"}, 30)
    log = json.loads((downloads / "tokentrim.json").read_text())
    assert len(log["blocks"]) == 10 and log["config"]["run"]["tokentrim"]["lam"] == 0.5
    # The page names the pruned blocks of the decision log, in the status and on the TokenTrim panel.
    pruned = [str(b["block"]) for b in log["blocks"] if b["action"] == "prune"]
    assert f"TokenTrim 10 blocks, {len(pruned)} pruned" in status(page)
    if pruned:
        words = f"block{'s' if len(pruned) > 1 else ''} {', '.join(pruned)}"
        assert f"({words})" in status(page) and f"TokenTrim: live, 30 frames, pruned: {words}" in page_text(
            page
        )
    assert (downloads / "tokentrim.mp4").read_bytes()[4:8] == b"ftyp"
    # A screenshot, and a look at it: the page is not blank.
    shot = tmp_path / "demo.png"
    page.save_screenshot(str(shot))
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[1] >= 1000 and pixels.std() > 20
    if os.environ.get("TOKENTRIM_DEMO_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["TOKENTRIM_DEMO_SCREENSHOT"])


def test_a_bad_input_shows_its_message_and_the_server_goes_on(page):
    css(page, "#demo-side input").click()  # back to a single run
    type_into(page, "#demo-latent-frames input", "10")
    css(page, "#demo-generate").click()
    wait_for(page, lambda d: "multiple of 3" in status(d))
    assert status(page) == "Error: Latent frames must be a positive multiple of 3 for Self Forcing, got 10"
    assert "Traceback" not in page_text(page)
    type_into(page, "#demo-latent-frames input", "6")
    css(page, "#demo-generate").click()
    wait_for(page, lambda d: status(d).startswith("Done"))


def test_cancel_stops_a_run(page):
    type_into(page, "#demo-latent-frames input", "240")  # the longest rollout allowed: a minute on a CPU
    css(page, "#demo-generate").click()
    wait_for(page, lambda d: status(d).startswith("Generating"))
    css(page, "#demo-cancel").click()
    wait_for(page, lambda d: status(d).startswith("Cancelled"), 30)
    assert "the unfinished video was not saved" in status(page)


def test_the_stopped_server_leaves_no_files(server, page):
    assert server.stop() == 128 + signal.SIGTERM, server.output()
    assert list(server.tmp.iterdir()) == [], "the demo's folder must go with the server"
    assert "Traceback" not in server.output(), server.output()
