"""The dashboard at `/`, in a real browser (Debian's chromium, headless, driven by selenium)
against a whole running system: log in with a token, watch a job appear, start and print live
(no reload), cancel it from the page, and see that another user's token shows none of it.

Also, without a browser: the page's files are served with a strict Content-Security-Policy,
their content types and cache validators, and nothing outside the static folder is reachable.

Screenshots of each step go to the test's tmp_path (and to $SCNS_SCREENSHOT_DIR when set: the
`overview` one is docs/dashboard.png). The browser and its driver are Debian's, at fixed paths:
nothing is downloaded (`make test` installs them; SCNS_SKIP_BROWSER=1 skips this test).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from services.cli.client import ApiError, Client
from services.gateway.app import create_app
from services.gateway.dashboard import CSP
from shared.settings import Settings
from shared.wiring import Wiring
from tests.e2e.conftest import TERMINAL, Factory, Running, submit, wait_state

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH, HEIGHT = 1400, 900
WAIT_S = 30.0


# --- the browser ------------------------------------------------------------------------------

def _need_browser() -> None:
    if os.environ.get("SCNS_SKIP_BROWSER") == "1":
        pytest.skip("SCNS_SKIP_BROWSER=1: the dashboard's browser test is skipped")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: run `make test`, which installs Debian's "
                    "chromium and chromium-driver (apt-get install -y chromium chromium-driver), "
                    "or set SCNS_SKIP_BROWSER=1 to skip the browser test", pytrace=False)


@dataclass
class Browser:
    driver: webdriver.Chrome
    screens: Path
    extra: Path | None
    shots: list[Path] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        """A screenshot of the page as it is now (tmp_path, and $SCNS_SCREENSHOT_DIR)."""
        path = self.screens / f"{len(self.shots) + 1:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot {name}"
        self.shots.append(path)
        if self.extra is not None:
            shutil.copyfile(path, self.extra / f"dashboard-{name}.png")
        return path

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def until(self, condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        """Wait for `condition()` to be truthy (re-evaluated every 100 ms); its value."""
        def check(_: WebDriver) -> Any:
            try:
                return condition()
            except WebDriverException:  # the DOM changed under a lookup: look again
                return False
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(check)
        except Exception as e:  # say what was awaited, and keep the page for the record
            self.shot("timeout")
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; banners: "
                                 f"{self.banners()!r}; screenshots in {self.screens}") from e

    def text(self, css: str) -> str:
        value = self.js("const e = document.querySelector(arguments[0]);"
                        "return e ? e.textContent : null;", css)
        return value if isinstance(value, str) else ""

    def attr(self, css: str, name: str) -> str | None:
        value = self.js("const e = document.querySelector(arguments[0]);"
                        "return e ? e.getAttribute(arguments[1]) : null;", css, name)
        return value if isinstance(value, str) else None

    def count(self, css: str) -> int:
        n = self.js("return document.querySelectorAll(arguments[0]).length;", css)
        return int(n)

    def visible(self, element_id: str) -> bool:
        return bool(self.js("const e = document.getElementById(arguments[0]);"
                            "return !!e && !e.closest('[hidden]') && e.offsetParent !== null;",
                            element_id))

    def script_errors(self) -> list[str]:
        """What the page's console said went wrong, but for the API's expected 4xx answers:
        uncaught exceptions, refused (CSP) loads, failed modules."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [str(e["message"]) for e in entries if e.get("level") == "SEVERE"
                and "Failed to load resource: the server responded with a status of 4"
                not in str(e["message"])]

    def banners(self) -> list[str]:
        found = self.js("return [...document.querySelectorAll('#banners .banner')]"
                        ".map(b => b.textContent);")
        return [str(x) for x in found or []]

    def row_state(self, ref: str) -> str | None:
        return self.attr(f'#jobs-body tr[data-job="{ref}"]', "data-state")

    def go(self, hash_: str) -> None:
        self.js("window.location.hash = arguments[0];", hash_)

    def accept_confirm(self) -> str:
        def alert() -> Any:
            try:
                return self.driver.switch_to.alert
            except NoAlertPresentException:
                return None
        box = self.until(alert, "the confirm dialog", timeout=10)
        message = str(box.text)
        box.accept()
        return message

    def login(self, token: str) -> None:
        self.until(lambda: self.visible("login-token"), "the login form")
        field_ = self.driver.find_element(By.ID, "login-token")
        field_.clear()
        field_.send_keys(token)
        self.driver.find_element(By.ID, "login-submit").click()


@pytest.fixture
def open_browser(tmp_path: Path) -> Iterator[Callable[[], Browser]]:
    """Opens the browser when the test asks (after `_need_browser`: a missing browser is the
    test's failure, with what to do, not a setup error); quits it after the test."""
    drivers: list[webdriver.Chrome] = []

    def start() -> Browser:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)  # Debian's: never Selenium Manager's download
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    f"--window-size={WIDTH},{HEIGHT}", "--disable-gpu", "--no-first-run",
                    "--disable-extensions", "--disable-background-networking", "--lang=en-US"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        drivers.append(driver)
        # the viewport itself is WIDTH x HEIGHT, whatever the window's decorations take
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1,
                                "mobile": False})
        screens = tmp_path / "screens"
        screens.mkdir(exist_ok=True)
        extra = os.environ.get("SCNS_SCREENSHOT_DIR")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
        return Browser(driver=driver, screens=screens, extra=Path(extra) if extra else None)

    yield start
    for driver in drivers:
        driver.quit()


# --- the test -----------------------------------------------------------------------------------

def _ref(job: dict[str, Any]) -> str:
    if job.get("array_job_id") is not None:
        return f"{job['array_job_id']}_{job['array_task_id']}"
    return str(job["id"])


SSE_SAMPLE = ("retry: 2000\r\n: from 0-0\r\n\r\n"
              "id: 1-0:job-started\nevent: job-started\ndata: {\"type\": \"job-started\",\n"
              "data: \"job_id\": 7}\n\n"
              ": keep-alive\n\n"
              "id: 2-0:worker-left\revent: worker-left\rdata: {\"worker_id\": \"w\"}\r\r"
              "data: no id\n\n"
              "id: 3-0:x\nevent: ignored, no data\n\n")
SSE_EXPECTED = [
    {"id": "1-0:job-started", "type": "job-started",
     "data": '{"type": "job-started",\n"job_id": 7}'},
    {"id": "2-0:worker-left", "type": "worker-left", "data": '{"worker_id": "w"}'},
    {"id": "2-0:worker-left", "type": "message", "data": "no id"},
]


def _check_the_sse_parser(b: Browser) -> None:
    """The page's event-stream parser, fed the same stream cut at every possible place."""
    got = b.driver.execute_async_script("""
        const [sample, done] = arguments;
        import("/ui/feed.js").then(({SSEParser}) => {
          const runs = [];
          for (let cut = 0; cut <= sample.length; cut++) {
            const events = [], comments = [];
            const p = new SSEParser((e) => events.push(e), (c) => comments.push(c));
            p.push(sample.slice(0, cut));
            p.push(sample.slice(cut));
            runs.push({events, comments, last: p.lastEventId, dispatched: p.dispatchedId,
                       retry: p.retry});
          }
          done(runs);
        }, (e) => done(String(e)));
    """, SSE_SAMPLE)
    assert isinstance(got, list), got
    for run in got:
        assert run["events"] == SSE_EXPECTED
        assert run["comments"] == ["from 0-0", "keep-alive"]
        assert (run["last"], run["retry"]) == ("3-0:x", 2000)
        assert run["dispatched"] == "3-0:x"  # an id alone, dispatched: the resume point


def _until_refused(client: Client, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.call("GET", "/api/v1/resources")
        except ApiError as e:
            refused = e
            break
        assert time.monotonic() < deadline, "the revoked token is still accepted"
        time.sleep(0.1)
    assert refused.status == 401, refused


def test_the_dashboard_follows_a_job_live(start_system: Factory,
                                          open_browser: Callable[[], Browser],
                                          tmp_path: Path) -> None:
    _need_browser()
    started = time.monotonic()
    b = open_browser()
    r: Running = start_system(cpus=2)

    # some history, so the table has more than one state in it
    done = submit(r, "echo assembled\n", name="assemble")
    failed = submit(r, "echo 'no input' >&2\nexit 3\n", name="etl")
    sweep = submit(r, "echo task $SCNS_ARRAY_TASK_ID\n", name="sweep", array="0-2")
    for job_id in (done["id"], failed["id"]):
        wait_state(r, job_id, TERMINAL)

    # the page, its login form; a wrong token is refused with the gateway's message
    b.driver.get(f"{r.url}/")
    b.until(lambda: b.visible("login-token"), "the login form")
    b.shot("login")
    b.login("scns_" + "x" * 43)
    b.until(lambda: b.visible("login-message")
            and "not valid" in b.text("#login-message"), "the refused-token message")
    b.shot("login-refused")

    _check_the_sse_parser(b)
    b.login(r.system.admin_token)
    b.until(lambda: b.row_state(str(failed["id"])) == "FAILED", "the failed job in the table")
    assert b.row_state(str(done["id"])) == "COMPLETED"
    assert b.js("return sessionStorage.getItem('scns.token');") == r.system.admin_token
    b.js("window.__scnsNoReload = 'still here';")  # gone if the page ever reloads

    # a job that prints, waits for `go`, prints again, then waits for `end` (never: cancelled)
    go, end = tmp_path / "go", tmp_path / "end"
    script = (f'echo "first line from the job"\necho "a line on stderr" >&2\n'
              f"while [ ! -e {go} ]; do sleep 0.05; done\n"
              f'echo "second line, after the marker"\n'
              f"while [ ! -e {end} ]; do sleep 0.05; done\n")
    live = submit(r, script, name="train", hold=True)
    ref = _ref(live)
    held = submit(r, "echo never\n", name="report", hold=True)
    b.until(lambda: b.row_state(ref) == "PENDING", f"job {ref} PENDING in the table")
    b.until(lambda: b.row_state(str(held["id"])) == "PENDING", "the held report job")
    b.shot("submitted")

    r.client.call("POST", f"/api/v1/jobs/{live['id']}/release")
    b.until(lambda: b.row_state(ref) == "RUNNING", f"job {ref} RUNNING, live in the table")
    assert b.js("return window.__scnsNoReload;") == "still here"

    # the event feed shows the job's events as they happen
    b.until(lambda: b.attr("#feed-status", "data-state") == "live", "the event feed to connect")
    b.until(lambda: b.count(f'#feed-list li[data-type="job-started"][data-job="{ref}"]') == 1,
            f"job-started of {ref} in the event feed")
    for job_id in range(sweep["id"], sweep["id"] + 3):
        wait_state(r, job_id, TERMINAL)
    b.until(lambda: b.count('#jobs-body tr[data-state="COMPLETED"]') >= 4, "the sweep done")
    b.shot("overview")  # docs/dashboard.png

    # its detail page: every field, and its output as it is written
    b.driver.find_element(By.CSS_SELECTOR, f'#jobs-body tr[data-job="{ref}"] a.job-link').click()
    b.until(lambda: b.attr("#job-state", "data-state") == "RUNNING", "the detail page")
    assert b.driver.current_url.endswith(f"#/jobs/{ref}")
    b.until(lambda: "first line from the job" in b.text("#job-log"), "the first line of output")
    assert b.text('[data-field="name"] dd') == "train"
    assert b.text('[data-field="worker_id"] dd') not in ("", "\u2013")  # where it runs
    assert "second line" not in b.text("#job-log")
    b.shot("detail")
    go.touch()
    b.until(lambda: "second line, after the marker" in b.text("#job-log"),
            "the second line, streamed live")
    b.shot("detail-log")
    b.driver.find_element(By.ID, "log-stderr").click()
    b.until(lambda: "a line on stderr" in b.text("#job-log"), "stderr")
    assert "first line" not in b.text("#job-log")
    b.driver.find_element(By.ID, "log-stdout").click()
    b.until(lambda: "second line" in b.text("#job-log"), "stdout again")

    # cancel it from the page
    b.driver.find_element(By.ID, "job-cancel").click()
    assert f"Cancel job {ref}" in b.accept_confirm()
    b.until(lambda: b.attr("#job-state", "data-state") == "CANCELLED", "CANCELLED, live")
    b.until(lambda: b.count(f'#feed-list li[data-type="job-finished"][data-job="{ref}"]') == 1,
            f"job-finished of {ref} in the event feed")
    b.until(lambda: b.attr("#log-status", "data-state") == "ended", "the log's end")
    assert wait_state(r, live["id"], TERMINAL)["state"] == "CANCELLED"
    assert b.js("return window.__scnsNoReload;") == "still here"
    b.shot("cancelled")

    # and the held one from the table's own Cancel button
    b.driver.find_element(By.CSS_SELECTOR, "a.back").click()
    button = f'#jobs-body tr[data-job="{held["id"]}"] button.cancel'
    b.until(lambda: b.count(button) == 1, "the table's Cancel button")
    b.driver.find_element(By.CSS_SELECTOR, button).click()
    b.accept_confirm()
    b.until(lambda: b.row_state(str(held["id"])) == "CANCELLED", "the held job CANCELLED")
    assert b.count(f'#jobs-body tr[data-job="{ref}"] button.cancel') == 0
    b.shot("table-cancelled")

    # filters and pages: the state and user filters go to the API; 50 jobs a page
    Select(b.driver.find_element(By.ID, "filter-state")).select_by_value("FAILED")
    b.until(lambda: b.count("#jobs-body tr[data-job]") == 1
            and b.row_state(str(failed["id"])) == "FAILED", "only the failed job")
    assert "state=FAILED" in b.driver.current_url
    b.go("#/jobs")
    b.until(lambda: b.count("#jobs-body tr[data-job]") == 7, "every job again")
    b.driver.find_element(By.ID, "filter-user").send_keys("nobody", Keys.ENTER)
    b.until(lambda: b.count("#jobs-body tr.empty") == 1, "no job of user nobody")
    b.go("#/jobs")
    many = submit(r, "true\n", name="many", array="0-50", hold=True)  # 51 jobs
    b.until(lambda: b.count("#jobs-body tr[data-job]") == 50, "a full first page")
    first_page = set(b.js("return [...document.querySelectorAll('#jobs-body tr')]"
                          ".map(tr => tr.dataset.job);"))
    b.driver.find_element(By.ID, "jobs-next").click()
    b.until(lambda: "cursor=" in b.driver.current_url
            and b.count("#jobs-body tr[data-job]") == 58 - 50, "the second page")
    assert b.row_state(str(done["id"])) == "COMPLETED"  # the oldest job: on the last page
    assert b.attr("#jobs-next", "disabled") is not None
    second_page = set(b.js("return [...document.querySelectorAll('#jobs-body tr')]"
                           ".map(tr => tr.dataset.job);"))
    assert not first_page & second_page
    b.shot("second-page")
    b.driver.find_element(By.ID, "jobs-prev").click()
    b.until(lambda: "cursor=" not in b.driver.current_url
            and b.count("#jobs-body tr[data-job]") == 50, "back to the first page")
    r.client.call("DELETE", f"/api/v1/jobs/{many['id']}")  # the whole array

    # the workers view: the worker with its bars, and the cluster's
    b.driver.find_element(By.ID, "nav-workers").click()
    b.until(lambda: b.count("#workers-body tr[data-worker]") == 1, "the worker")
    b.until(lambda: "/ 2" in b.text('[data-meter="cpus"] .meter-value'), "the cluster's CPUs")
    assert not b.visible("nav-schedules")  # nothing scheduled: no Schedules tab
    b.shot("workers")

    # another user: none of the admin's jobs, in the table, the feed or by address
    bob = r.client.call("POST", "/api/v1/tokens", {"user": "bob"})
    b.driver.find_element(By.ID, "logout").click()
    b.login(bob["token"])
    b.go("#/jobs")
    b.until(lambda: b.count("#jobs-body tr.empty") == 1, "bob's empty job list")
    assert b.count("#jobs-body tr[data-job]") == 0
    as_bob = Client(r.url, token=bob["token"])
    own = as_bob.call("POST", "/api/v1/jobs", {"script": "echo mine\n", "name": "bobs"})
    b.until(lambda: b.row_state(str(own["id"])) in TERMINAL, "bob's own job, finished")
    b.until(lambda: b.attr("#feed-status", "data-state") == "live", "bob's feed")
    b.until(lambda: b.count(f'#feed-list li[data-type="job-finished"][data-job="{own["id"]}"]')
            == 1, "bob's job in bob's feed")
    jobs_in_feed = set(b.js("return [...document.querySelectorAll('#feed-list li')]"
                            ".map(li => li.dataset.job).filter(Boolean);"))
    assert jobs_in_feed == {str(own["id"])}, jobs_in_feed
    assert b.count("#jobs-body tr[data-job]") == 1
    b.shot("other-user")
    b.go(f"#/jobs/{ref}")
    b.until(lambda: any(f"job {ref} does not exist" in t for t in b.banners()),
            "the 404 of the admin's job, in a banner")
    assert b.visible("job-missing") and not b.visible("job-detail")
    b.shot("other-user-404")

    # a revoked token sends the page back to its login form, saying why
    r.client.call("DELETE", f"/api/v1/tokens/{bob['id']}")
    _until_refused(as_bob)  # a gateway caches a verified token for up to 2 s
    b.go("#/workers")
    b.until(lambda: b.visible("login-form") and "revoked" in b.text("#login-message"),
            "the login form after the token was revoked")
    assert b.js("return sessionStorage.getItem('scns.token');") is None
    b.shot("revoked")
    assert b.script_errors() == []
    print(f"dashboard test: {time.monotonic() - started:.1f}s, screenshots in {b.screens}")


# --- the files, without a browser -----------------------------------------------------------

@pytest.fixture
async def gateway() -> AsyncIterator[TestClient[Any, Any]]:
    """The gateway app alone: the dashboard's routes touch neither Redis nor PostgreSQL."""
    redis = Redis()  # never connected: nothing here reaches it
    app = create_app(Wiring.build(Settings(), redis, pool=None))  # type: ignore[arg-type]
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await redis.aclose()


async def test_the_page_and_its_files_are_served_strictly(gateway: TestClient[Any, Any]) -> None:
    page = await gateway.get("/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Content-Security-Policy"] == CSP
    assert "default-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert page.headers["Cache-Control"] == "no-cache"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    html = await page.text()
    assert "<script>" not in html and " style=" not in html  # nothing inline
    names = set(re.findall(r'"/ui/([^"]+)"', html))
    assert {"app.js", "app.css"} <= names
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
             ".svg": "image/svg+xml"}
    for name in names:
        resp = await gateway.get(f"/ui/{name}")
        assert resp.status == 200, name
        assert resp.headers["Content-Type"] == types[Path(name).suffix]
        assert resp.headers["Content-Security-Policy"] == CSP
        etag = resp.headers["ETag"]
        again = await gateway.get(f"/ui/{name}", headers={"If-None-Match": etag})
        assert again.status == 304 and not await again.read()
    # every module the scripts import is there too, and no script reaches elsewhere
    for name in [n for n in names if n.endswith(".js")]:
        source = await (await gateway.get(f"/ui/{name}")).text()
        for imported in re.findall(r'from "\./([^"]+)"', source):
            assert (await gateway.get(f"/ui/{imported}")).status == 200, imported
        assert "http://" not in source and "https://" not in source, name
    for path in ("/ui/nope.js", "/ui/..%2Fdashboard.py", "/ui/.hidden", "/ui/%2e%2e%2fapp.py",
                 "/ui/index.html%00.js"):
        resp = await gateway.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found"
    # the page's paths are public; nothing else became so
    resp = await gateway.get("/ui/../api/v1/jobs")
    assert resp.status in (401, 404)
    assert (await gateway.get("/api/v1/jobs")).status == 401
