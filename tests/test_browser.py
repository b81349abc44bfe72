"""The run report in a real browser: Debian's chromium, driven by Playwright, loads the page of a short
real run from disk with every network request refused.

Needs the ``playwright`` package (the dev extra) and a chromium (``make test`` installs Debian's as
root; ``TINYGRAPH_CHROMIUM`` names another).  Where either is missing the tests skip with the reason,
except on CI (``CI`` set, as CI sets it) or with ``TINYGRAPH_REQUIRE_BROWSER=1``, where a missing
browser is a failure: a green CI run must have run them.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.main import main

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"
TEXT = "".join(
    f"{i}: O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name.\n" for i in range(60)
)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# the first box of a graph view whose centre is inside the view (a long unroll starts panned to its left end)
VISIBLE_BOX = """(view) => {
  const r = view.getBoundingClientRect();
  for (const n of view.querySelectorAll('g.node[data-box]')) {
    const b = n.getBoundingClientRect(), x = b.x + b.width / 2, y = b.y + b.height / 2;
    if (b.width > 0 && x > r.left + 5 && x < r.right - 5 && y > r.top + 5 && y < r.bottom - 5
        && /^[nc]/.test(n.dataset.box)) { return n.dataset.box; }
  }
  return null;
}"""


def _required() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
        for name in ("CI", "TINYGRAPH_REQUIRE_BROWSER")
    )


def _unavailable(reason: str) -> None:
    if _required():
        pytest.fail(f"CI (or TINYGRAPH_REQUIRE_BROWSER) requires the browser tests to run: {reason}", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    named = os.environ.get("TINYGRAPH_CHROMIUM")
    if named:
        return named
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    exe = chromium_path()
    if exe is None:
        _unavailable("no chromium found (Debian: apt-get install chromium; or set TINYGRAPH_CHROMIUM)")
    elif not Path(exe).is_file():
        _unavailable(f"TINYGRAPH_CHROMIUM={exe} is not a file")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    corpus = base / "romeo.txt"
    corpus.write_text(TEXT)
    out = base / "run"
    layers = '[{type="Embedding", dim=8}, {type="LSTM", hidden_size=16, num_layers=2}, {type="Dense", size="vocab"}]'
    sets = ["train.eval_interval=5", "train.sample_length=60", "train.seq_len=12", f"model.layers={layers}"]
    argv = ["train", "--config", str(TINY), "--corpus", str(corpus), "--out", str(out), "--steps", "20"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    return out


class Page:
    """A page loaded from disk, with what went wrong on it recorded: console errors, page errors and
    any request that would leave the file system."""

    def __init__(self, browser: Any, path: Path):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on(
            "console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:", "about:")):
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, run_dir: Path) -> Iterator[Page]:
    p = Page(browser, run_dir / "report.html")
    yield p
    p.close()


def test_the_page_loads_from_disk_with_no_error_and_no_request(page: Page) -> None:
    pg = page.page
    assert pg.title().endswith("tinygraph run report")
    for selector in ("#training svg.chart", "#heatmap svg", "#gates svg", "#graph-cell svg"):
        assert pg.locator(selector).first.is_visible(), selector
    assert pg.locator("#training svg.chart path").count() > 20  # the curves drawn
    assert pg.locator("#flow-curve polyline").count() >= 4  # 2 layers, now and at step 0
    assert pg.locator("#sample-text").inner_text().strip()
    assert pg.locator("text=LSTM layer 1").count() >= 1
    assert page.errors == [] and page.requests == []


def test_the_slider_steps_through_the_samples(page: Page, run_dir: Path) -> None:
    from charlm.run import read_metrics

    samples = read_metrics(run_dir / "samples.jsonl")
    assert [s["step"] for s in samples] == [5, 10, 15, 20]
    pg = page.page
    label, text = pg.locator("#sample-label"), pg.locator("#sample-text")
    assert label.inner_text().startswith("step 20") and text.inner_text() == samples[-1]["text"]
    slider = pg.locator("#sample-slider")
    slider.focus()
    pg.keyboard.press("Home")
    assert label.inner_text().startswith("step 5") and text.inner_text() == samples[0]["text"]
    pg.keyboard.press("ArrowRight")
    assert label.inner_text().startswith("step 10") and text.inner_text() == samples[1]["text"]
    assert page.errors == []


def test_the_cursor_on_the_heatmap_shows_that_evaluations_curve(page: Page) -> None:
    pg = page.page
    label = pg.locator("#flow-label")
    assert label.inner_text().startswith("step 20")
    before = pg.locator("#flow-curve polyline").last.get_attribute("points")
    heat = pg.locator("#heatmap svg")
    heat.scroll_into_view_if_needed()
    box = heat.bounding_box()
    assert box is not None
    pg.mouse.move(box["x"] + box["width"] * 0.12, box["y"] + box["height"] * 0.5)  # the left panel's early steps
    assert not label.inner_text().startswith("step 20")
    assert pg.locator("#flow-curve polyline").last.get_attribute("points") != before
    pg.mouse.click(box["x"] + box["width"] * 0.12, box["y"] + box["height"] * 0.5)
    kept = label.inner_text()
    assert "kept" in kept
    pg.mouse.move(0, 0)
    assert label.inner_text() == kept
    assert page.errors == []


def test_clicking_a_graph_node_shows_its_details_and_the_view_pans_and_zooms(page: Page) -> None:
    pg = page.page
    for key in ("cell", "op"):
        pg.locator(f".graph-tab[data-graph={key}]").click()
        view = pg.locator(f"#graph-{key}")
        view.scroll_into_view_if_needed()
        box = view.evaluate(VISIBLE_BOX)
        assert box is not None, key
        pg.locator(f"#graph-{key} g.node[data-box={box}]").click()
        details = pg.locator("#node-details")
        assert details.get_attribute("data-box") == box
        shown = details.inner_text()
        for what in ("kind", "op", "scope", "outputs", "gradient norm"):
            assert what in shown, (key, what, shown)
        assert pg.locator(f"#graph-{key} g.node.selected").count() == 1
    svg = pg.locator("#graph-op svg")
    before = svg.get_attribute("viewBox")
    view = pg.locator("#graph-op").bounding_box()
    pg.mouse.move(view["x"] + view["width"] / 2, view["y"] + view["height"] / 2)
    pg.mouse.wheel(0, -300)
    zoomed = svg.get_attribute("viewBox")
    assert zoomed != before
    pg.mouse.down()
    pg.mouse.move(view["x"] + view["width"] / 2 - 120, view["y"] + view["height"] / 2 + 40, steps=5)
    pg.mouse.up()
    assert svg.get_attribute("viewBox") != zoomed
    pg.locator("[data-zoom=fit]").click()
    assert page.errors == []


def test_a_recurrent_step_shows_its_scope(page: Page) -> None:
    pg = page.page
    pg.locator(".graph-tab[data-graph=cell]").click()
    pg.locator("[data-zoom=fit]").click()
    steps = pg.locator("#graph-cell g.node[data-box^=c]")
    assert steps.count() >= 8  # 2 layers x 4 steps
    steps.first.dispatch_event("mouseenter")
    shown = pg.locator("#node-details").inner_text()
    assert "cell = lstm" in shown and "layer = " in shown and "t = " in shown and "lstm_step" in shown


def test_a_screenshot_is_not_blank(page: Page, tmp_path: Path) -> None:
    from PIL import Image

    shot = page.page.screenshot(full_page=True)
    (tmp_path / "report.png").write_bytes(shot)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.height > 2000  # the whole page, charts and all
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, curves, the heatmap's ramp
    background = max(colours)[0] / (image.width * image.height)
    assert background < 0.9


def test_the_page_of_a_run_without_evaluations(browser: Any, tmp_path: Path) -> None:
    from charlm import config as cfg

    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.toml").write_text(cfg.to_toml(cfg.resolve(TINY, [], {})))
    assert main(["report", str(run)]) == 0
    p = Page(browser, run / "report.html")
    try:
        assert "No evaluation yet" in p.page.locator("main").inner_text()
        assert p.errors == [] and p.requests == []
    finally:
        p.close()
