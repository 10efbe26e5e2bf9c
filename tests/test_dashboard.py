"""The web dashboard at /ui in a real headless Chromium (Selenium), against `gls cluster up` processes.

Redis, the gateway, a coordinator and a bound worker run as real processes on loopback. A job
submitted over REST appears in the page after signing in with a token; its page draws the curve
from the server-sent events while the job runs and fills the evaluation table; the download
button saves the same bytes as the REST route; the certify form shows the verdicts of
POST /v1/certify; another tenant's token shows none of it; the cancel button cancels.

Needs Debian's chromium and chromium-driver (scripts/bootstrap installs them as root).
GLS_DASHBOARD_SCREENSHOT=docs/dashboard.png also saves a picture of the job page and the verdicts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver import Chrome
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from gls_core.catalog import certify_methods
from gls_core.data import load_dataset
from services.cluster import Cluster, up

pytestmark = pytest.mark.slow  # ~45 s on two busy cores: four processes start, a job trains, another is cancelled

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ALICE, BOB = "alice-token-3f9c", "bob-token-81d2"
# RGS (the first-order GLS estimator) on digits: ~80 quick steps with an evaluation every epoch.
JOB: dict[str, Any] = {
    "name": "dashboard-rgs", "seed": 3, "estimator": "rgs", "relaxation": "deeppoly", "eps": 0.02,
    "data": {"dataset": "digits", "batch_size": 64, "test_subset": 60},
    "model": {"arch": "fc-32", "init": "kaiming"},
    "schedule": {"epochs": 8, "lr": 0.01, "lr_milestones": [6], "eps_ramp_epochs": 2, "steps_per_epoch": 10},
    "evaluation": {"pgd_steps": 2, "pgd_restarts": 1},
    "device": "cpu",
}
LONG_JOB = {**JOB, "name": "dashboard-long", "schedule": {**JOB["schedule"], "epochs": 500}}
T = TypeVar("T")


def wait(condition: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value: T | None = None
        with contextlib.suppress(WebDriverException):  # an element being replaced: ask again
            value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = up(tmp_path_factory.mktemp("cluster"), workers=1, threads=1, tokens=f"{ALICE}=alice,{BOB}=bob")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Chrome]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"the dashboard test needs a headless Chromium: {', '.join(missing)} missing; install the "
                    "Debian packages with `apt-get install -y chromium chromium-driver` (scripts/bootstrap does "
                    "it as root)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--force-device-scale-factor=1", "--hide-scrollbars",
                     "--proxy-server=direct://"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()  # ends chromium and chromedriver


def api(cluster: Cluster, token: str) -> httpx.Client:
    return httpx.Client(base_url=cluster.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def sign_in(driver: Chrome, token: str) -> None:
    if driver.find_element(By.ID, "session").is_displayed():
        driver.find_element(By.ID, "logout").click()
    field = wait(lambda: driver.find_element(By.ID, "token"), what="the token field")
    wait(field.is_displayed, what="the token field")
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait(lambda: driver.find_element(By.ID, "session").is_displayed(), what="signed in")


def text(driver: Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def status(driver: Chrome) -> str:
    """The job page's status badge (read in one script: each update replaces the element)."""
    return str(driver.execute_script("return document.getElementById('job-status').dataset.status || ''"))


def points(driver: Chrome) -> tuple[int, int]:
    """The page's count of loss points and Chart.js's own, for the job chart."""
    attribute, charted = driver.execute_script(
        "const canvas = document.getElementById('job-chart');"
        "const chart = Chart.getChart(canvas);"
        "const losses = chart ? chart.data.datasets.filter((set) => set.yAxisID === 'loss') : null;"
        "return [canvas.dataset.points, losses ? losses.reduce((n, set) => n + set.data.length, 0) : -1];")
    return int(attribute), int(charted)


def requests_sent(driver: Chrome) -> list[dict[str, Any]]:
    """The browser's network requests (Chrome's performance log) since the last call."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            sent.append(message["params"]["request"])
    return sent


def screenshot(driver: Chrome) -> Image.Image:
    """The whole page (up to 1600 px tall) at 1280 px wide, as the user sees it."""
    height = -1
    try:
        for _ in range(5):  # a live page may grow while it is laid out again: measure until it holds still
            full = int(driver.execute_script("return document.documentElement.scrollHeight"))
            if full == height:
                break
            height = full
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": 1280, "height": min(height, 1600), "deviceScaleFactor": 1, "mobile": False})
            time.sleep(0.3)  # a relayout and a chart redraw
        return Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def save_picture(parts: list[Image.Image], path: Path) -> None:
    """The pictures one above the other at full size, as a 256-colour PNG (flat UI colours: small and sharp)."""
    gap = 12
    sheet = Image.new("RGB", (max(part.width for part in parts), sum(part.height + gap for part in parts) - gap),
                      "#c7ccd4")
    top = 0
    for part in parts:
        sheet.paste(part, (0, top))
        top += part.height + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def test_the_event_stream_parser_gives_the_same_events_for_any_chunking(browser: Chrome, cluster: Cluster) -> None:
    """fetch() hands the page the stream in arbitrary pieces: every piece size gives the same events."""
    stream = ('retry: 2000\n: events of job-1\n\nid: 1-0\nevent: metrics\ndata: {"step":1}\n\n: heartbeat\r\n\r\n'
              'id: 2-0\r\nevent: end\r\ndata: {"a":\r\ndata:2}\r\n\r\ndata: unterminated')
    browser.get(f"{cluster.gateway_url}/ui/")
    results = browser.execute_async_script("""
        const [text, done] = arguments;
        import("./sse.js").then(({ EventStreamParser }) => done([...Array(text.length).keys()].map((index) => {
          const events = [];
          const parser = new EventStreamParser((event) => events.push(event));
          for (let at = 0; at < text.length; at += index + 1) parser.feed(text.slice(at, at + index + 1));
          return { events, lastId: parser.lastId, retry: parser.retry };
        })));""", stream)
    expected = {"events": [{"type": "metrics", "data": '{"step":1}', "id": "1-0"},
                           {"type": "end", "data": '{"a":\n2}', "id": "2-0"}], "lastId": "2-0", "retry": 2000}
    assert len(results) == len(stream) and all(result == expected for result in results), results[0]


def test_sign_in_job_list_live_curve_metrics_download_and_certify(browser: Chrome, cluster: Cluster,
                                                                  downloads: Path) -> None:
    driver, alice = browser, api(cluster, ALICE)
    picture = os.environ.get("GLS_DASHBOARD_SCREENSHOT")
    shots: list[Image.Image] = []

    # the page and its assets come without a token, from the gateway itself, outside the API schema
    page = httpx.get(f"{cluster.gateway_url}/ui", follow_redirects=True)
    assert page.status_code == 200 and str(page.url).endswith("/ui/") and "<canvas" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not [path for path in alice.get("/openapi.json").json()["paths"] if path.startswith("/ui")]
    driver.get(f"{cluster.gateway_url}/ui")
    wait(lambda: driver.find_element(By.ID, "view-signin").is_displayed(), what="the sign-in view")
    loaded = requests_sent(driver)
    assert {url.rsplit("/", 1)[-1] for url in (request["url"] for request in loaded)} >= {
        "chart.umd.min.js", "app.js", "style.css"}
    assert all(request["url"].startswith(cluster.gateway_url) for request in loaded), "offline: no other hosts"

    sign_in(driver, ALICE)
    wait(lambda: "0 jobs" in text(driver, "jobs-updated"), what="the empty job list")
    job = alice.post("/v1/jobs", json=JOB).json()
    link = wait(lambda: driver.find_element(By.CSS_SELECTOR, f"#jobs-body tr[data-job='{job['id']}'] a"),
                what="the submitted job in the list")
    link.click()

    # the curve grows while the job runs, from the event stream
    wait(lambda: text(driver, "job-id") == job["id"], what="the job page")
    seen: list[int] = []
    half = JOB["schedule"]["epochs"] * JOB["schedule"]["steps_per_epoch"] // 2
    deadline = time.monotonic() + 90
    while status(driver) not in ("succeeded", "failed", "cancelled"):
        count, charted = points(driver)
        assert charted == count
        if not seen or seen[-1] != count:
            seen.append(count)
        if picture and not shots and status(driver) == "running" and count >= half:  # a curve still growing
            shots.append(screenshot(driver))
        assert time.monotonic() < deadline, f"the job did not finish: {alice.get('/v1/jobs/' + job['id']).json()}"
        time.sleep(0.05)
    assert status(driver) == "succeeded", text(driver, "job-error")
    job = alice.get(f"/v1/jobs/{job['id']}").json()
    assert job["model_id"] and job["model_id"] in text(driver, "job-facts")
    rows = alice.get(f"/v1/jobs/{job['id']}/metrics").json()
    steps = [row for row in rows if row["kind"] == "step"]
    evaluations = [row for row in rows if row["kind"] == "epoch"]
    wait(lambda: points(driver)[0] == len(steps), 5, "every step in the chart")
    growing = [count for count in seen if 0 < count < len(steps)]
    assert len(growing) >= 2, f"the chart did not grow while the job ran: counts seen {seen}"
    assert seen == sorted(seen)
    assert driver.find_element(By.ID, "job-live").get_attribute("data-state") == "ended"

    # the evaluation table holds every evaluation row the API has
    table = driver.find_elements(By.CSS_SELECTOR, "#metrics-body tr")
    assert len(table) == len(evaluations) == JOB["schedule"]["epochs"] + 1
    certified_column = [row.find_elements(By.TAG_NAME, "td")[5].text for row in table]
    assert certified_column == [f"{100 * row['certified_acc']:.1f}%" for row in evaluations]
    # the chart: accuracies in %, one marker per evaluation, straight lines (no smoothing), loss per stage
    charted = driver.execute_script(
        "const chart = Chart.getChart(document.getElementById('job-chart'));"
        "return chart.data.datasets.map((set) => [set.label, set.yAxisID, set.tension, set.pointRadius,"
        " set.data.map((point) => point.y)]);")
    accuracy = {label: (tension, radius, ys) for label, axis, tension, radius, ys in charted if axis == "acc"}
    assert accuracy["certified acc (%)"][2] == pytest.approx([100 * row["certified_acc"] for row in evaluations])
    assert all(tension == 0 and radius > 0 for tension, radius, _ in accuracy.values())
    assert [label for label, axis, tension, *_ in charted if axis == "loss" and tension == 0] == ["loss (main)"]
    if picture and not shots:
        shots.append(screenshot(driver))

    # download: the model bytes the REST route serves, saved through a blob URL
    driver.find_element(By.ID, "job-download").click()
    saved = downloads / f"{job['id']}.safetensors"
    wait(lambda: saved.is_file() and not list(downloads.glob("*.crdownload")), 20, "the downloaded model")
    assert saved.read_bytes() == alice.get(f"/v1/jobs/{job['id']}/model").content

    # certify the trained model from its page: the verdicts are the API's, one row per input
    driver.find_element(By.ID, "job-certify").click()
    model = wait(lambda: Select(driver.find_element(By.ID, "certify-model")).first_selected_option
                 .get_attribute("value") == job["model_id"], what="the model preselected")
    assert model
    test = load_dataset("digits", "test", subset=10)
    body = {"inputs": test.x.tolist(), "labels": test.y.tolist()}
    inputs = downloads / "inputs.json"
    inputs.write_text(json.dumps(body))
    driver.find_element(By.ID, "certify-file").send_keys(str(inputs))
    wait(lambda: driver.find_element(By.ID, "certify-inputs").get_attribute("value"), what="the file read")
    listed = wait(lambda: [option.get_attribute("value") for option in Select(
        driver.find_element(By.ID, "certify-method")).options] == list(certify_methods()), what="the methods listed")
    assert listed  # every relaxation the gateway takes (its records), then complete
    Select(driver.find_element(By.ID, "certify-method")).select_by_value("deeppoly")
    eps = driver.find_element(By.ID, "certify-eps")
    eps.clear()
    eps.send_keys("0.05")
    driver.find_element(By.ID, "certify-submit").click()
    verdicts = wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#verdicts-body tr"), 60, "the verdicts")
    expected = alice.post("/v1/certify", json={**body, "model_id": job["model_id"], "eps": 0.05,
                                               "relaxation": "deeppoly"}).json()
    assert [row.get_attribute("data-certified") for row in verdicts] == \
        [str(verdict["certified"]).lower() for verdict in expected["verdicts"]]
    assert [int(row.find_elements(By.TAG_NAME, "td")[3].text) for row in verdicts] == \
        [verdict["predicted"] for verdict in expected["verdicts"]]
    assert 0 < expected["certified"] < expected["total"], expected["certified"]  # both kinds of row are shown
    assert text(driver, "certify-summary").startswith(f"{expected['certified']} of {len(test.y)} certified")
    assert "positive: not certified" in text(driver, "certify-margin-note").lower()
    if picture:
        shots.append(screenshot(driver))
        save_picture(shots, Path(picture))

    # a stage change starts a new loss line and is marked "warm-up → main"
    stages = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "import('./curve.js').then(({ Curve }) => {"
        " const canvas = document.createElement('canvas'); document.body.append(canvas);"
        " const curve = new Curve(canvas);"
        " for (const [stage, step] of [['warmup', 1], ['warmup', 2], ['main', 3], ['main', 4]])"
        "  curve.add({ kind: 'step', stage, step, loss: 1 / step });"
        " const chart = curve.chart;"
        " const result = [chart.data.datasets.filter((set) => set.yAxisID === 'loss')"
        "  .map((set) => [set.label, set.data.length]), curve.boundaries,"
        "  canvas.dataset.points];"
        " curve.destroy(); canvas.remove(); done(result); });")
    assert stages == [[["loss (warm-up)", 2], ["loss (main)", 2]], [{"at": 2.5, "label": "warm-up → main"}], "4"]

    # the token travelled only as a header
    sent = requests_sent(driver)
    api_calls = [request for request in sent if "/v1/" in request["url"]]
    assert api_calls and all(request["headers"].get("Authorization") == f"Bearer {ALICE}" for request in api_calls)
    assert not [request["url"] for request in sent if ALICE in request["url"]]
    assert ALICE not in driver.current_url


def test_another_tenant_sees_nothing_and_cancel_stops_a_job(browser: Chrome, cluster: Cluster) -> None:
    driver, alice, bob = browser, api(cluster, ALICE), api(cluster, BOB)
    job = alice.post("/v1/jobs", json=LONG_JOB).json()
    driver.get(f"{cluster.gateway_url}/ui/#/jobs")
    sign_in(driver, ALICE)
    wait(lambda: driver.find_elements(By.CSS_SELECTOR, f"#jobs-body tr[data-job='{job['id']}']"), what="alice's job")

    sign_in(driver, BOB)
    wait(lambda: "0 jobs" in text(driver, "jobs-updated"), what="bob's job list")
    assert not driver.find_elements(By.CSS_SELECTOR, "#jobs-body tr") and bob.get("/v1/jobs").json() == []
    driver.get(f"{cluster.gateway_url}/ui/#/certify")
    wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#certify-model option"), what="bob's model list")
    assert [option.get_attribute("value") for option in
            driver.find_elements(By.CSS_SELECTOR, "#certify-model option")] == [""]
    driver.get(f"{cluster.gateway_url}/ui/#/jobs/{job['id']}")
    wait(lambda: "not found" in text(driver, "message"), what="bob's 404 for alice's job")
    assert text(driver, "job-id") == "" and points(driver)[0] == 0
    assert not driver.find_elements(By.CSS_SELECTOR, "#metrics-body tr, #job-facts dd")

    sign_in(driver, ALICE)
    driver.get(f"{cluster.gateway_url}/ui/#/jobs/{job['id']}")
    wait(lambda: status(driver) == "running" and points(driver)[0] > 0, 60, "the long job running")
    driver.find_element(By.ID, "job-cancel").click()
    driver.switch_to.alert.accept()
    wait(lambda: status(driver) == "cancelled", 30, "the cancelled badge")
    assert alice.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert driver.find_element(By.ID, "job-cancel").get_attribute("disabled") is not None
