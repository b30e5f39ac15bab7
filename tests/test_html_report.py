"""The HTML report, opened in a real headless chromium over the DevTools protocol.

The page must load without console errors, exceptions or network requests (everything inline),
show every cell of the table as formatted (value, interval, failed/skipped with the reason on
hover), escape names taken from result files, and sort rows when a header is clicked.

The browser is Debian's ``chromium`` (installed by ``.ci/run``). Without it the browser tests
skip on a developer's machine and fail in CI (``CI=true``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clbench.api import run_suite
from clbench.cli import app
from clbench.results.store import SCHEMA_VERSION, cell_path, load_results, write_result

try:
    import websocket  # websocket-client, in the dev extra
except ImportError:
    websocket = None

SUITE = """
suite: html-demo
device: cpu
encoders:
  pixels: {type: identity}
  mock: {type: mock, dim: 16}
datasets:
  digits: {type: sklearn-digits, test_fraction: 0.3}
tasks:
  - {name: digits-knn, type: knn, dataset: digits, k: [5, 10, 20]}
  - {name: digits-linear, type: linear_probe, dataset: digits, c_min: 0.01, c_max: 0.01,
     label_fractions: [0.2, 1.0], seeds: [0, 1], max_iter: 200, encoders: [pixels]}
"""

EVIL = '<img src=x onerror="console.error(1)">&amp;'  # an encoder name that must stay text


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
needs_browser = pytest.mark.skipif(
    (CHROMIUM is None or websocket is None) and os.environ.get("CI") != "true",
    reason="needs chromium (apt-get install chromium) and websocket-client; both required when CI=true",
)
cli = CliRunner()


# ---- a minimal DevTools-protocol client ----------------------------------------------------


class Browser:
    """Headless chromium driven over CDP: open a page, collect console errors, evaluate JS."""

    def __init__(self, profile: Path) -> None:
        if CHROMIUM is None:
            pytest.fail("CI=true but chromium is not installed: .ci/run must install it")
        if websocket is None:
            pytest.fail("CI=true but websocket-client is not installed: it is in the dev extra")
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"chromium did not start (exit code {self.proc.returncode})")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}{path}", timeout=60, suppress_origin=True
        )
        self.next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            data = json.loads(self.ws.recv())
            if data.get("id") == self.next_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
            self.events.append(data)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return Page(self, session, url)


class Page:
    def __init__(self, browser: Browser, session: str, url: str) -> None:
        self.browser, self.session, self.url = browser, session, url

    def eval(self, expression: str):
        out = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )
        if "exceptionDetails" in out:
            raise RuntimeError(out["exceptionDetails"])
        return out["result"].get("value")

    def _events(self) -> list[dict]:
        self.eval("1")  # flush: events sent before this reply are collected by now
        return [e for e in self.browser.events if e.get("sessionId") == self.session]

    def errors(self) -> list[str]:
        """Console errors and assertions, uncaught exceptions and error log entries (CSP included)."""
        out = []
        for e in self._events():
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(
                    "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(params["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append("log: " + params["entry"].get("text", ""))
        return out

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self._events()
            if e.get("method") == "Network.requestWillBeSent"
        ]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


# ---- results -------------------------------------------------------------------------------


def synthetic(encoder, task, value=None, *, status="ok", reason=None, **extra):
    r = {
        "schema_version": SCHEMA_VERSION,
        "suite": "html-demo",
        "encoder": encoder,
        "task": task,
        "task_type": "sts",
        "status": status,
        "reason": reason,
        "metrics": {} if value is None else {"spearman": value},
        "main_metric": "spearman",
        "main_value": value,
        "protocol_version": "1",
        "comparability_hash": "sts-h",
        "versions": {"clbench": "0.1.0"},
        "git": {"commit": "abc123", "dirty": False},
        "device": "cpu",
    }
    r.update(extra)
    return r


def error_result(encoder, value, **extra):
    r = synthetic(encoder, "digits-error", value, **extra)
    r.update(
        task_type="regression_probe",
        main_metric="mse",
        metrics={"mse": value},
        higher_is_better=False,
        comparability_hash="err-h",
    )
    return r


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """A real run (identity and mock on sklearn digits: k-NN with three k, a label-efficiency
    probe) plus synthetic cells with intervals, a failure, a skip, a missing cell, a
    lower-is-better column and an encoder name full of HTML."""
    tmp = tmp_path_factory.mktemp("html-run")
    (tmp / "suite.yaml").write_text(textwrap.dedent(SUITE))
    assert run_suite(tmp / "suite.yaml").ok
    folder = tmp / "results" / "html-demo"
    extra = [
        synthetic("pixels", "sts", 0.8123, ci={"main": {"low": 0.7901, "high": 0.8302, "level": 0.95}}),
        synthetic("mock", "sts", 0.6543, ci={"main": {"low": 0.6, "high": 0.7, "level": 0.95}}),
        synthetic(EVIL, "sts", status="failed", reason="CUDA out of memory <b>not bold</b>"),
        synthetic(
            EVIL,
            "digits-knn",
            status="skipped",
            reason="needs an image encoder",
            task_type="knn",
            main_metric="top1@k20",
        ),
        error_result("pixels", 0.25, metrics_ci={"mse": {"low": 0.2, "high": 0.3, "level": 0.9}}),
        error_result("mock", 0.125),
        error_result(EVIL, 0.5),
    ]
    for r in extra:
        write_result(cell_path(folder, r["suite"], r["encoder"], r["task"]), r)
    return folder


@pytest.fixture(scope="module")
def report_file(results_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("html-out") / "report.html"
    res = cli.invoke(app, ["report", str(results_dir), "--format", "html", "--output", str(out)])
    assert res.exit_code == 0, res.output
    return out


def expected_cells(results_dir: Path) -> dict[tuple[str, str], dict]:
    """(encoder, task) -> what the cell must show, computed from the result files directly."""
    results, bad = load_results(results_dir)
    assert bad == []
    out = {}
    for r in results:
        if r["status"] != "ok":
            out[(r["encoder"], r["task"])] = {"text": r["status"], "title": r["reason"]}
            continue
        value = r["main_value"]
        text = f"{value:.4f}"  # every value of these columns lies on a 0-1 scale
        ci = (r.get("ci") or {}).get("main") or (r.get("metrics_ci") or {}).get(r["main_metric"])
        if ci:
            text += f" [{ci['low']:.4f}, {ci['high']:.4f}]"
        out[(r["encoder"], r["task"])] = {"text": text, "value": value}
    return out


DOM_TABLE = """JSON.stringify({
  headers: Array.from(document.querySelectorAll('#results thead th')).map(th => th.innerText.trim()),
  rows: Array.from(document.querySelectorAll('#results tbody tr')).map(tr =>
    Array.from(tr.cells).map(c => ({text: c.innerText.replace(/\\s+/g, ' ').trim(), title: c.title})))
})"""


def dom_table(page: Page) -> dict:
    return json.loads(page.eval(DOM_TABLE))


def column_index(headers: list[str], task: str) -> int:
    (j,) = [i for i, h in enumerate(headers) if h.startswith(task + " (")]
    return j


# ---- tests ---------------------------------------------------------------------------------


@needs_browser
def test_page_loads_clean_and_shows_every_cell(browser, results_dir, report_file):
    page = browser.open(report_file.resolve().as_uri())
    assert page.errors() == []
    assert all(url.startswith(("file:", "data:")) for url in page.requests()), page.requests()
    table = dom_table(page)
    rows = {row[0]["text"]: row for row in table["rows"]}
    assert set(rows) == {"mock", "pixels", EVIL}  # the HTML in the name is text, not markup
    expected = expected_cells(results_dir)
    tasks = {task for _, task in expected}
    assert len(table["headers"]) == 1 + len(tasks)
    for (encoder, task), want in expected.items():
        cell = rows[encoder][column_index(table["headers"], task)]
        assert cell["text"].replace("*", "") == want["text"], (encoder, task, cell)
        if "title" in want:  # failed / skipped: the reason on hover
            assert want["title"] in cell["title"]
    # the missing cell (no linear probe for mock / EVIL) shows a dash
    assert rows["mock"][column_index(table["headers"], "digits-linear")]["text"] == "–"
    # no script injected through names or reasons, and the plots are there, inline
    assert page.eval("document.querySelectorAll('img[src^=\"x\"], b').length") == 0
    n_plots = page.eval("document.querySelectorAll('figure img[src^=\"data:image/svg+xml;base64,\"]').length")
    kinds = page.eval("Array.from(document.querySelectorAll('figure')).map(f => f.dataset.plot)")
    assert n_plots == len(kinds) and {"bars", "k", "label_efficiency"} <= set(kinds)
    loaded = page.eval("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert loaded


@needs_browser
def test_best_value_is_bold_lower_is_better_respected(browser, report_file):
    page = browser.open(report_file.resolve().as_uri())
    bold = page.eval(
        "Array.from(document.querySelectorAll('#results tbody tr')).map(tr => "
        "[tr.cells[0].innerText, Array.from(tr.cells).map(c => !!c.querySelector('strong'))])"
    )
    headers = dom_table(page)["headers"]
    bold = {enc: flags for enc, flags in bold}
    err = column_index(headers, "digits-error")
    assert "↓" in headers[err]
    assert [enc for enc, flags in bold.items() if flags[err]] == ["mock"]  # mse 0.125 is the lowest
    sts = column_index(headers, "sts")
    assert [enc for enc, flags in bold.items() if flags[sts]] == ["pixels"]


@needs_browser
def test_clicking_a_header_sorts_the_rows(browser, results_dir, report_file):
    page = browser.open(report_file.resolve().as_uri())
    expected = expected_cells(results_dir)
    headers = dom_table(page)["headers"]

    def order():
        return [row[0]["text"] for row in dom_table(page)["rows"]]

    def click(j):
        page.eval(f"document.querySelectorAll('#results thead th')[{j}].click()")

    def values(task):
        return {enc: v["value"] for (enc, t), v in expected.items() if t == task and "value" in v}

    for task, higher in (("digits-knn", True), ("digits-error", False)):
        j = column_index(headers, task)
        vals = values(task)
        best_first = sorted(vals, key=lambda e: vals[e], reverse=higher)
        no_number = [e for e in ("mock", "pixels", EVIL) if e not in vals]
        click(j)
        assert order() == best_first + no_number
        state = page.eval(f"document.querySelectorAll('#results thead th')[{j}].getAttribute('aria-sort')")
        assert state == ("descending" if higher else "ascending")
        click(j)  # reversed; cells without a number stay at the bottom
        assert order() == best_first[::-1] + no_number
    click(0)
    assert order() == sorted(["mock", "pixels", EVIL])
    assert page.errors() == []


@needs_browser
def test_the_harness_sees_console_errors(browser, tmp_path):
    """The checks above are not vacuous: a page with errors is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); undefinedFunction();</script>")
    errors = browser.open(bad.resolve().as_uri()).errors()
    assert any("boom" in e for e in errors) and any(e.startswith("exception") for e in errors)


def test_html_structure_without_a_browser(results_dir, report_file):
    text = report_file.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "default-src 'none'" in text  # the page may not load anything
    for forbidden in ("http://", "https://", "<link", "@import", 'src="http', "url("):
        assert forbidden not in text.replace("http://www.w3.org", ""), forbidden
    assert EVIL not in text and "&lt;img src=x" in text
    assert "<b>not bold</b>" not in text and "&lt;b&gt;not bold&lt;/b&gt;" in text
    # provenance
    for fact in ("html-demo", "abc123", "clbench", "0.1.0", "cpu"):
        assert fact in text


def test_html_without_plots_and_empty_folder(results_dir, tmp_path):
    out = tmp_path / "r.html"
    res = cli.invoke(app, ["report", str(results_dir), "-f", "html", "-o", str(out), "--no-plots"])
    assert res.exit_code == 0 and "<figure" not in out.read_text()
    (tmp_path / "empty").mkdir()
    res = cli.invoke(app, ["report", str(tmp_path / "empty"), "-f", "html"])
    assert (
        res.exit_code == 0
        and "no results found in" in res.output
        and res.output.startswith("<!DOCTYPE html>")
    )


@needs_browser
def test_published_column_renders_and_sorts(browser, tmp_path):
    """``report --published``: the (published) column sits after its task column, cells stay aligned."""
    folder = tmp_path / "results"
    for enc, method, top1 in (("moco", "mocov2-800ep", 0.689), ("mocov1", "mocov1-200ep", 0.61)):
        r = synthetic(enc, "linear", top1, task_type="linear_probe", main_metric="top1", metrics={"top1": top1},
                      dataset="imagenet", comparability_hash="lin-h",
                      options={"encoder": {"type": "zoo", "method": method}, "task": {"type": "linear_probe"}})
        write_result(cell_path(folder, r["suite"], r["encoder"], r["task"]), r)
    out = tmp_path / "report.html"
    res = cli.invoke(app, ["report", str(folder), "-f", "html", "--published", "--no-plots", "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = browser.open(out.resolve().as_uri())
    assert page.errors() == []
    table = dom_table(page)
    assert table["headers"] == ["encoder", "linear (top1)", "linear (published)"]
    rows = {row[0]["text"]: [c["text"] for c in row[1:]] for row in table["rows"]}
    assert rows["moco"] == ["0.6890", "0.7110 (\u22120.0220)*"]  # 71.1 published; beyond 1.5 points
    assert rows["mocov1"] == ["0.6100", "0.6060 (+0.0040)"]  # 60.6 published; within tolerance
    page.eval("document.querySelectorAll('#results thead th')[2].click()")  # highest published first
    assert [row[0]["text"] for row in dom_table(page)["rows"]] == ["moco", "mocov1"]
    page.eval("document.querySelectorAll('#results thead th')[2].click()")
    assert [row[0]["text"] for row in dom_table(page)["rows"]] == ["mocov1", "moco"]
    assert page.errors() == []
