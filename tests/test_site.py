"""Browser tests of the built book in ``_build/html`` (run after ``jupyter-book build .``).

* Every page that embeds widget state (found by scanning the built HTML, so new chapters are
  covered automatically) is opened in headless Debian Chromium through a localhost server,
  with every request to any other host blocked and recorded. The page must have no console
  or page errors, no failed local requests, every widget view must render (images decoded),
  and moving a slider must change the displayed frame. A screenshot of each page is saved to
  ``_build/screenshots/``.
* A static scan asserts that no built HTML or CSS file loads a non-local URL as a script,
  stylesheet, font, image or other resource.

Without a build these tests are skipped, except under ``CI`` where a missing build fails.
Chromium: ``/usr/bin/chromium`` (Debian package ``chromium``) or ``$SCORETUT_CHROMIUM``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
CHROMIUM = os.environ.get("SCORETUT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

pytestmark = pytest.mark.site


def _missing(reason: str) -> None:
    """Skip locally; fail under CI, where the build and browser must be there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def _widget_pages() -> list[str]:
    """Built pages (relative to ``_build/html``) that embed ipywidgets state."""
    if not SITE.is_dir():
        return []
    return sorted(
        p.relative_to(SITE).as_posix()
        for p in SITE.rglob("*.html")
        if "_static" not in p.parts and WIDGET_STATE in p.read_text(encoding="utf-8", errors="replace")
    )


WIDGET_PAGES = _widget_pages()


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        _missing("no built site at _build/html/index.html; run: jupyter-book build . -W -n --keep-going")
    return SITE


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[str]:
    """Serve ``_build/html`` on a free localhost port; yield the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser(site: Path) -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        _missing(f"no Chromium at {CHROMIUM}; apt-get install chromium (or set SCORETUT_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageLog:
    """Everything that went wrong while a page loaded and ran."""

    def __init__(self) -> None:
        self.blocked: list[str] = []  # requests to non-local hosts (aborted)
        self.console: list[str] = []  # console.error messages
        self.page_errors: list[str] = []  # uncaught exceptions
        self.failed: list[str] = []  # local requests that failed or returned >= 400

    def problems(self) -> list[str]:
        return ([f"non-local request: {u}" for u in self.blocked]
                + [f"console error: {m}" for m in self.console]
                + [f"page error: {m}" for m in self.page_errors]
                + [f"failed request: {m}" for m in self.failed])


@contextlib.contextmanager
def open_page(browser: object, url: str) -> Iterator[tuple[object, PageLog]]:
    """Open ``url`` in a fresh context that blocks and records every non-local request."""
    log = PageLog()
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")

    def route(route: object) -> None:
        target = urlsplit(route.request.url)
        if target.scheme in ("http", "https", "ws", "wss") and target.hostname not in LOCAL_HOSTS:
            log.blocked.append(route.request.url)
            route.abort("blockedbyclient")
        else:
            route.continue_()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: log.console.append(f"{m.text} @ {m.location}") if m.type == "error" else None)
    page.on("pageerror", lambda e: log.page_errors.append(str(e)))
    page.on("requestfailed", lambda r: None if r.url in log.blocked
            else log.failed.append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: log.failed.append(f"{r.url} (HTTP {r.status})") if r.status >= 400 else None)
    try:
        page.goto(url, wait_until="load")
        yield page, log
    finally:
        context.close()


# JS: the state of every rendered widget view on the page.
VIEWS_JS = """() => [...document.querySelectorAll('.widget-subarea')].map(area => {
    const visible = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
    const imgs = [...area.querySelectorAll('img')].filter(visible);
    return {
        widgets: area.querySelectorAll('.jupyter-widgets').length,
        visible: visible(area),
        sliders: [...area.querySelectorAll('.widget-slider')].filter(visible).length,
        imgs: imgs.length,
        broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
        src: imgs.map(i => i.src).join(' '),
        text: area.innerText,
    };
})"""


def _expected_views(page: object) -> int:
    return page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()


def _wait_rendered(page: object) -> list[dict]:
    """Wait until every widget view script has a rendered view with decoded images."""
    expected = _expected_views(page)
    assert expected > 0, "page embeds widget state but shows no widget view"
    page.wait_for_function(
        f"""() => {{
            const areas = [...document.querySelectorAll('.widget-subarea')];
            return areas.length >= {expected} && areas.every(a =>
                a.querySelector('.jupyter-widgets') &&
                [...a.querySelectorAll('img')].every(i => i.offsetWidth === 0 || (i.complete && i.naturalWidth > 0)));
        }}""",
        timeout=30_000,
    )
    return page.evaluate(VIEWS_JS)


def _wait_src_change(page: object, view: int, src: str) -> None:
    """Wait until the visible frame image(s) of widget view ``view`` differ from ``src``."""
    page.wait_for_function(
        f"""() => {{
            const a = document.querySelectorAll('.widget-subarea')[{view}];
            const src = [...a.querySelectorAll('img')]
                .filter(i => i.offsetWidth > 0).map(i => i.src).join(' ');
            return src !== {json.dumps(src)};
        }}""",
        timeout=10_000,
    )


def test_site_has_widget_pages(site: Path) -> None:
    """The intro alone has a widget, so an empty scan means the widget path is broken."""
    assert WIDGET_PAGES, f"no page under {site} embeds {WIDGET_STATE}"


@pytest.mark.parametrize("page_path", WIDGET_PAGES or ["<no widget pages>"])
def test_widget_page(page_path: str, site: Path, server: str, browser: object) -> None:
    if page_path not in WIDGET_PAGES:
        pytest.fail("no built page embeds widget state; rebuild the book")
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot_name = page_path.removesuffix(".html").replace("/", "__")
    with open_page(browser, server + page_path) as (page, log):
        views = _wait_rendered(page)
        page.screenshot(path=str(SHOTS / f"{shot_name}.png"), full_page=True)
        for i, view in enumerate(views):
            assert view["visible"] and view["widgets"] > 0, f"widget view {i} did not render: {view}"
            assert view["broken"] == 0, f"widget view {i} has {view['broken']} image(s) not loaded"

        players = [i for i, v in enumerate(views) if v["sliders"] and v["imgs"]]
        assert players, f"{page_path}: no widget with a slider and a frame image"
        areas = page.locator(".widget-subarea")
        for i in players:
            area = areas.nth(i)
            area.scroll_into_view_if_needed()
            before_png = area.screenshot()
            before = page.evaluate(VIEWS_JS)[i]
            # Keyboard on the slider handle (noUiSlider): End jumps to the last frame.
            handle = area.locator(".widget-slider .noUi-handle").first
            handle.focus()
            page.keyboard.press("End")
            _wait_src_change(page, i, before["src"])
            after = _wait_rendered(page)[i]
            assert after["broken"] == 0, f"widget view {i}: frame not loaded after moving the slider"
            after_png = area.screenshot()
            assert after_png != before_png, f"widget view {i}: the picture did not change"
            if after["text"] == before["text"]:
                # Frame labels (if any) are part of the text; a player without labels shows
                # the slider readout, which must change too.
                pytest.fail(f"widget view {i}: label/readout did not change: {after['text']!r}")
            (SHOTS / f"{shot_name}__widget{i}_after.png").write_bytes(after_png)

            # The Play button (jslinked to the slider) must advance the frames by itself.
            page.keyboard.press("Home")
            _wait_src_change(page, i, after["src"])
            start = page.evaluate(VIEWS_JS)[i]["src"]
            area.locator(".widget-play button").first.click()
            _wait_src_change(page, i, start)
        page.wait_for_timeout(300)  # let late console errors arrive
        assert not log.problems(), "\n".join(log.problems())


def test_plain_pages_load_cleanly(site: Path, server: str, browser: object) -> None:
    """Pages without widgets (the index redirect, search, references...) must be clean too."""
    pages = sorted(
        rel for rel in (p.relative_to(site).as_posix() for p in site.rglob("*.html"))
        if rel not in WIDGET_PAGES and not rel.startswith(("_static/", "_sources/", "reports/"))
    )
    assert "index.html" in pages
    for path in pages:
        with open_page(browser, server + path) as (page, log):
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(300)
            assert not log.problems(), f"{path}:\n" + "\n".join(log.problems())


# --- static scan -----------------------------------------------------------------------

REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, //host
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)""", re.IGNORECASE)
CSS_IMPORT = re.compile(r"""@import\s+['"]([^'"]+)""", re.IGNORECASE)
RESOURCE_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "shortcut",
                 "apple-touch-icon", "manifest", "font", "preconnect", "dns-prefetch"}


def _remote(url: str) -> bool:
    return bool(REMOTE.match(url)) and not url.strip().lower().startswith(("data:", "blob:"))


class ResourceScanner(HTMLParser):
    """Collect every URL an HTML page loads as a resource (not plain links)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed", "track", "input"):
            self.urls += [a[k] for k in ("src",) if a.get(k)]
        if tag in ("img", "source") and a.get("srcset"):
            self.urls += [part.split()[0] for part in a["srcset"].split(",") if part.strip()]
        if tag == "link" and set(a.get("rel", "").lower().split()) & RESOURCE_RELS and a.get("href"):
            self.urls.append(a["href"])
        if tag == "object" and a.get("data"):
            self.urls.append(a["data"])
        if a.get("style"):
            self.urls += CSS_URL.findall(a["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += CSS_URL.findall(data) + CSS_IMPORT.findall(data)


def test_no_remote_resources_in_built_files(site: Path) -> None:
    offenders: list[str] = []
    for path in sorted(site.rglob("*.html")):
        scanner = ResourceScanner()
        scanner.feed(path.read_text(encoding="utf-8", errors="replace"))
        offenders += [f"{path.relative_to(site)}: {u}" for u in scanner.urls if _remote(u)]
    for path in sorted(site.rglob("*.css")):
        css = re.sub(r"/\*.*?\*/", "", path.read_text(encoding="utf-8", errors="replace"), flags=re.S)
        urls = CSS_URL.findall(css) + CSS_IMPORT.findall(css)
        offenders += [f"{path.relative_to(site)}: {u}" for u in urls if _remote(u)]
    assert not offenders, "non-local resource URLs:\n" + "\n".join(offenders)
