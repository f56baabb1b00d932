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


# --- what a reader sees: equations, navigation, figures ----------------------------------

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def _pages_with(marker: str) -> list[str]:
    """Built content pages whose HTML contains ``marker``."""
    if not SITE.is_dir():
        return []
    return sorted(
        p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
        if not set(p.relative_to(SITE).parts[:1]) & {"_static", "_sources", "reports"}
        and marker in p.read_text(encoding="utf-8", errors="replace")
    )


MATH_PAGES = _pages_with('class="math notranslate nohighlight"')
FIGURE_PAGES = _pages_with("<figure")


@contextlib.contextmanager
def _at(browser: object, url: str, viewport: dict) -> Iterator[object]:
    """``url`` opened at ``viewport`` size, with MathJax finished typesetting."""
    context = browser.new_context(viewport=viewport, service_workers="block")
    context.route("**/*", lambda r: r.abort("blockedbyclient")
                  if urlsplit(r.request.url).hostname not in LOCAL_HOSTS else r.continue_())
    page = context.new_page()
    try:
        page.goto(url, wait_until="load")
        page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
        yield page
    finally:
        context.close()


# JS: every display equation: its row (div.math, equation + number) against the column,
# and the MathJax box that holds the equation: its width, what it holds, whether it scrolls
# and shows the scroll cue (a gradient background).
EQUATIONS_JS = """() => [...document.querySelectorAll('div.math')].map(d => {
    const n = d.querySelector('.eqno');
    const box = d.querySelector('mjx-container') || d;
    const s = getComputedStyle(box);
    const column = d.parentElement.clientWidth;
    return {id: d.id, number: n ? n.textContent.replace('#', '').trim() : '',
            row: Math.round(d.getBoundingClientRect().width), column,
            rowContent: d.scrollWidth, box: box.clientWidth, content: box.scrollWidth,
            overflowX: s.overflowX, cue: s.backgroundImage.includes('gradient'),
            scrolls: (() => { box.scrollLeft = 40; const x = box.scrollLeft;
                              box.scrollLeft = 0; return x > 0; })()};
})"""


def _too_wide(eq: dict) -> bool:
    """The row sticks out of the column, or the equation out of its box."""
    return (eq["row"] > eq["column"] + 1 or eq["rowContent"] > eq["row"] + 1
            or eq["content"] > eq["box"] + 1)


@pytest.mark.parametrize("page_path", MATH_PAGES or ["<no math pages>"])
def test_equations_fit_the_column_on_a_desktop(page_path: str, site: Path, server: str,
                                               browser: object) -> None:
    """At 1280 px no display equation (with its number) is wider than its column."""
    if page_path not in MATH_PAGES:
        pytest.fail("no built page has display math; rebuild the book")
    with _at(browser, server + page_path, DESKTOP) as page:
        wide = [e for e in page.evaluate(EQUATIONS_JS) if _too_wide(e)]
    assert not wide, f"{page_path}: equations wider than the column at 1280 px: {wide}"


@pytest.mark.parametrize("page_path", MATH_PAGES or ["<no math pages>"])
def test_wide_equations_scroll_in_their_own_box_on_a_phone(page_path: str, site: Path,
                                                           server: str, browser: object) -> None:
    """At 390 px an equation wider than the column scrolls inside its box, with a cue."""
    if page_path not in MATH_PAGES:
        pytest.fail("no built page has display math; rebuild the book")
    with _at(browser, server + page_path, PHONE) as page:
        eqs = page.evaluate(EQUATIONS_JS)
        page_width = page.evaluate("() => document.documentElement.scrollWidth")
    wide = [e for e in eqs if e["content"] > e["box"] + 1]
    stuck = [e for e in wide if e["overflowX"] not in ("auto", "scroll") or not e["scrolls"]
             or not e["cue"]]
    stuck += [e for e in eqs if e["row"] > e["column"] + 1 or e["rowContent"] > e["row"] + 1]
    assert not stuck, f"{page_path}: wide equations that do not scroll with a cue: {stuck}"
    assert page_width <= PHONE["width"], f"{page_path}: the page is {page_width} px wide at 390 px"


def _click_visible(page: object, selector: str) -> None:
    buttons = page.locator(selector)
    visible = [buttons.nth(i) for i in range(buttons.count()) if buttons.nth(i).is_visible()]
    assert visible, f"no visible {selector} button"
    visible[0].click()


def test_phone_menu_and_contents_buttons(site: Path, server: str, browser: object) -> None:
    """At 390 px the menu button opens the chapter list and the contents button the page
    contents; at 1280 px the menu button collapses the sidebar."""
    page_path = next((p for p in MATH_PAGES if p.startswith("book/")), None)
    assert page_path, "no chapter page built"
    shown = """sel => { const d = document.querySelector(sel);
        return !!d && d.open && [...d.querySelectorAll('a')].filter(a => a.offsetWidth > 0).length; }"""
    with _at(browser, server + page_path, PHONE) as page:
        _click_visible(page, ".primary-toggle")
        page.wait_for_timeout(300)
        links = page.evaluate(shown, "#pst-primary-sidebar-modal")
        assert links and links >= 10, "menu button: no chapter list shown at 390 px"
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)
        _click_visible(page, ".secondary-toggle")
        page.wait_for_timeout(300)
        links = page.evaluate(shown, "#pst-secondary-sidebar-modal")
        assert links and links >= 2, "contents button: no page contents shown at 390 px"
    with _at(browser, server + page_path, DESKTOP) as page:
        shows = """() => { const s = document.querySelector('#pst-primary-sidebar');
            return getComputedStyle(s).visibility !== 'hidden' && s.getBoundingClientRect().right > 1; }"""
        assert page.evaluate(shows), "no primary sidebar on a desktop"
        _click_visible(page, ".primary-toggle")
        page.wait_for_timeout(800)
        assert not page.evaluate(shows), "menu button did not collapse the sidebar at 1280 px"
        _click_visible(page, ".primary-toggle")
        page.wait_for_timeout(800)
        assert page.evaluate(shows), "menu button did not bring the sidebar back at 1280 px"


class FigureImages(HTMLParser):
    """(src, alt) of every ``<img>`` inside a ``<figure>``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.images: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "figure":
            self.depth += 1
        elif tag == "img" and self.depth:
            a = dict(attrs)
            self.images.append((a.get("src") or "", a.get("alt")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self.depth:
            self.depth -= 1


def test_figure_images_have_real_alt_text(site: Path) -> None:
    bad: list[str] = []
    for rel in FIGURE_PAGES:
        parser = FigureImages()
        parser.feed((site / rel).read_text(encoding="utf-8"))
        for src, alt in parser.images:
            text = (alt or "").strip()
            if (len(text) < 15 or "_images/" in text or "jupyter_execute" in text
                    or re.fullmatch(r"\S+\.(png|jpe?g|svg|gif)", text, re.IGNORECASE)):
                bad.append(f"{rel}: {src} alt={alt!r}")
    assert FIGURE_PAGES, "no built page has a figure"
    assert not bad, "figure images without real alt text:\n" + "\n".join(bad)


@pytest.mark.parametrize("page_path", FIGURE_PAGES or ["<no figure pages>"])
def test_figures_are_not_shrunk(page_path: str, site: Path, server: str, browser: object) -> None:
    """At 1280 px every figure image is shown at >= 85 % of its natural width, so the text
    in it keeps the size it was drawn at (the book style draws it at >= 10 px)."""
    if page_path not in FIGURE_PAGES:
        pytest.fail("no built page has a figure; rebuild the book")
    with _at(browser, server + page_path, DESKTOP) as page:
        page.wait_for_function("() => [...document.querySelectorAll('figure img')]"
                               ".every(i => i.complete)", timeout=20_000)
        imgs = page.evaluate("""() => [...document.querySelectorAll('figure img')]
            .filter(i => i.offsetWidth > 0)
            .map(i => ({src: i.src.split('/').pop(), shown: i.getBoundingClientRect().width,
                        natural: i.naturalWidth}))""")
    small = [i for i in imgs if i["shown"] < 0.85 * i["natural"]]
    assert not small, f"{page_path}: figures shrunk below 85 % of their width: {small}"


def test_captions_are_not_light(site: Path, server: str, browser: object) -> None:
    """Figure captions use the normal text weight and colour, not a light grey."""
    page_path = next(iter(FIGURE_PAGES), None)
    assert page_path, "no built page has a figure"
    with _at(browser, server + page_path, DESKTOP) as page:
        styles = page.evaluate("""() => [...document.querySelectorAll('figcaption .caption-text')]
            .map(t => { const s = getComputedStyle(t);
                        return [parseInt(s.fontWeight), s.color]; })""")
    assert styles, f"{page_path}: no captions"
    light = [s for s in styles if s[0] < 400]
    assert not light, f"{page_path}: captions at a light weight: {light[:3]}"


def test_no_source_maps_shipped(site: Path) -> None:
    maps = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.map"))
    assert not maps, f"source maps in the built site: {maps}"


def test_search_snippets_have_no_tex(site: Path, server: str, browser: object) -> None:
    """Search results show math as text, not TeX source."""
    with _at(browser, server + "search.html?q=preconditioning", DESKTOP) as page:
        page.wait_for_function("() => document.querySelectorAll('#search-results li p').length > 0",
                               timeout=30_000)
        snippets = page.evaluate("() => [...document.querySelectorAll('#search-results li p')]"
                                 ".map(p => p.textContent)")
    tex = [s for s in snippets if re.search(r"\\[()\[\]]|\\[a-zA-Z]+", s)]
    assert not tex, f"search snippets with TeX: {tex[:3]}"
