"""Sphinx extension that keeps the scoretut book fully offline.

Loaded from ``_config.yml`` (``sphinx: local_extensions``). It does these things:

1. **Vendors the browser-side libraries** a page needs, pinned to exact versions and
   checked against their npm ``sha512`` integrity: require.js and
   ``@jupyter-widgets/html-manager`` (the widget renderer; its ``embed-amd.js`` bundles the
   core ``@jupyter-widgets/base``/``controls``/``output`` modules and the Font Awesome fonts
   the Play button uses) and MathJax 3. The tarballs come from ``npm pack`` into
   ``.cache/vendor/`` (git-ignored) and only the files a page loads are extracted to
   ``.cache/vendor/static/scoretut-vendor/``. That folder is added to
   ``html_static_path`` here, in Python, so Jupyter Book's scan of the root ``_static/``
   (which auto-includes every ``.js`` it finds on every page) never sees the bundles.
   Without npm and without a cached tarball the build stops with a one-line message.
2. **Points myst-nb and Sphinx at the local copies** (``nb_ipywidgets_js``,
   ``mathjax_path``), replacing their public-CDN defaults.
3. **Makes widgets work with this theme and offline**, on pages that embed widgets: sets
   the widget loader's module base URL (the ``data-jupyter-widgets-cdn`` attribute of
   ``embed-amd.js``) to a local, page-relative folder, so even a widget class that is not
   bundled could never be fetched from a CDN (it 404s locally instead, which
   ``tests/test_site.py`` catches); adds a small setup script that points embed-amd.js at
   its own font files and bridges MathJax 3; and stops the theme's Font Awesome script
   from rewriting widget icons (which breaks the Play button).
4. **Sets up the kernels' environment** (they are child processes of the build): the
   repository root goes first on ``PYTHONPATH``, so chapters (which run with ``book/`` as
   their working directory) import this checkout's ``scoretut``, never a stale installed
   copy; and ``MPLBACKEND`` is set to the inline backend, because a ``MPLBACKEND=Agg``
   inherited from the shell (CI sets it) would stop ipykernel from choosing inline and every
   matplotlib figure would silently vanish from the pages.
5. **Keeps the execution cache honest.** jupyter-cache keys a chapter on its code cells
   only, so by itself it would serve stale outputs after a change to the ``scoretut``
   package, and serve fast-scale outputs to a ``SCORETUT_SCALE=full`` build. Here each
   scale gets its own cache (``_build/.jupyter_cache/<scale>/``), and a cache is emptied
   (and every page re-read) whenever the package source differs from the one it was
   filled with (or the device and AFHQ settings differ). Unchanged chapters with unchanged
   library code are never re-run. At full scale the per-cell time limit is lifted.
6. **Switches off sphinx-thebe**, which Jupyter Book 1 always loads: its live-code launcher
   points at remote hosts and its inline ``const THEBE_JS_URL`` configuration can be
   emitted twice, which raises a console error on every page.
7. **Offers every chapter as a notebook.** Each chapter page's download menu gets its
   ``.ipynb``, converted from the MyST source at build time by :mod:`scoretut_notebooks`
   (MyST-NB has no download for markdown notebooks) and written beside the ``.md`` in
   ``_sources/``; both links carry the ``download`` attribute, so they save a file.
8. **Reader-facing fixes on every page** (``book/_ext/static/scoretut-site.{css,js}``):
   display equations scroll inside their own box with a shadow cue when wider than the
   column; full-contrast captions; the sidebar buttons of sphinx-book-theme 1.3 wired to
   pydata-sphinx-theme 0.17's handlers (see the script); search snippets with the TeX of
   inline math turned into plain text. Every image in a figure gets its caption as alt
   text (Sphinx would use the file path), and the bibliography is labelled author–year
   like the citations (``scoretut_bib``).
9. **Ships no source maps**: the themes' ``*.map`` files (and the ``sourceMappingURL``
   comments pointing at them) are removed from the built site when the build finishes.

To move to a newer library version, edit :data:`PACKAGES` (version *and* integrity; get the
integrity with ``npm view NAME@VERSION dist.integrity``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError
from sphinx.util import logging

from scoretut_notebooks import is_notebook, write_notebook

logger = logging.getLogger(__name__)

#: URL prefix, inside the built ``_static/``, of everything this extension vendors.
STATIC_PREFIX = "scoretut-vendor"


@dataclass(frozen=True)
class Package:
    """One npm package to vendor and the files from it that pages load."""

    name: str
    version: str
    integrity: str  # npm ``dist.integrity`` (sha512, base64)
    dest: str  # folder name under ``_static/scoretut-vendor/``
    include: tuple[str, ...]  # paths inside the tarball's ``package/``; a trailing / means a folder

    @property
    def tarball(self) -> str:
        """File name that ``npm pack`` writes for this package."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


PACKAGES: tuple[Package, ...] = (
    Package(
        "requirejs",
        "2.3.8",
        "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
        "requirejs-2.3.8",
        ("require.js",),
    ),
    Package(
        # html-manager 1.0.x is the embedder for ipywidgets 8 (widget protocol 2.1).
        "@jupyter-widgets/html-manager",
        "1.0.15",
        "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        "html-manager-1.0.15",
        # embed-amd.js resolves its font files next to itself (webpack public path).
        ("dist/embed-amd.js", "dist/*.woff2", "dist/*.woff", "dist/*.ttf", "dist/*.eot", "dist/*.svg"),
    ),
    Package(
        "mathjax",
        "3.2.2",
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        "mathjax-3.2.2",
        # The combined component plus what it may load lazily (TeX extensions, fonts, menu,
        # accessibility); the other combined bundles and the SVG output are left out.
        ("LICENSE", "es5/tex-mml-chtml.js", "es5/input/", "es5/output/chtml/", "es5/a11y/",
         "es5/ui/", "es5/sre/", "es5/adaptors/"),
    ),
)

REQUIREJS, HTML_MANAGER, MATHJAX = PACKAGES


def _static_url(pkg: Package, path: str) -> str:
    """URL of a vendored file relative to ``_static/``."""
    return f"{STATIC_PREFIX}/{pkg.dest}/{path}"


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _fetch(pkg: Package, cache: Path) -> Path:
    """Return the verified tarball of ``pkg``, running ``npm pack`` if it is not cached."""
    tgz = cache / pkg.tarball
    if not tgz.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise ExtensionError(
                f"scoretut_site: npm is needed once to vendor {pkg.name}@{pkg.version}; "
                f"install Node.js/npm (Debian: apt-get install npm) or put {pkg.tarball} in {cache}/"
            )
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [npm, "pack", f"{pkg.name}@{pkg.version}", "--json", "--loglevel=error",
             "--pack-destination", str(cache)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0 or not tgz.is_file():
            err = " ".join((proc.stderr or proc.stdout).split())[-300:]
            raise ExtensionError(
                f"scoretut_site: 'npm pack {pkg.name}@{pkg.version}' failed ({err}); "
                "check that the npm registry is reachable and rebuild"
            )
    got = _integrity(tgz)
    if got != pkg.integrity:
        tgz.unlink()
        raise ExtensionError(
            f"scoretut_site: {tgz.name} has integrity {got}, expected {pkg.integrity}; "
            "the bad tarball was deleted, rebuild to fetch it again"
        )
    return tgz


def _wanted(member: str, include: tuple[str, ...]) -> bool:
    rel = member.removeprefix("package/")
    for pattern in include:
        if pattern.endswith("/"):
            if rel.startswith(pattern):
                return True
        elif PurePosixPath(rel).match(pattern) and rel.count("/") == pattern.count("/"):
            return True
    return False


def _extract(pkg: Package, tgz: Path, static_root: Path) -> None:
    """Extract the wanted files of ``tgz`` into ``static_root/<prefix>/<dest>/`` once."""
    dest = static_root / STATIC_PREFIX / pkg.dest
    stamp = dest / ".scoretut-vendored.json"
    fingerprint = {"integrity": pkg.integrity, "include": list(pkg.include)}
    if stamp.is_file() and json.loads(stamp.read_text()) == fingerprint:
        return
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    count = 0
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and _wanted(member.name, pkg.include):
                rel = PurePosixPath(member.name.removeprefix("package/"))
                if rel.is_absolute() or ".." in rel.parts:
                    raise ExtensionError(f"scoretut_site: unsafe path {member.name} in {tgz.name}")
                out = dest.joinpath(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                out.write_bytes(src.read())
                count += 1
    if count == 0:
        raise ExtensionError(f"scoretut_site: nothing extracted from {tgz.name}; fix PACKAGES.include")
    stamp.write_text(json.dumps(fingerprint))


#: Loaded between require.js and embed-amd.js on pages with widgets (see _write_setup_js).
WIDGETS_SETUP_JS = """\
// Generated by book/_ext/scoretut_site.py; runs after require.js, before embed-amd.js.
(function () {
  "use strict";
  // 1. embed-amd.js finds its font files (Font Awesome, for the Play button) relative to
  //    the URL that require.js gives its modules; map those module names to the folder
  //    that really holds embed-amd.js instead of "<page dir>/@jupyter-widgets/...".
  var dist = new URL("%(dist)s", document.currentScript.src).href;
  window.__jupyter_widgets_assets_path__ = dist;
  window.requirejs.config({ paths: {
    "@jupyter-widgets": dist.replace(/\\/$/, ""),
    "@jupyter-widgets/html-manager/dist": dist.replace(/\\/$/, "")
  } });
  // 2. Widget labels are typeset with the MathJax 2 API (MathJax.Hub.Queue) when MathJax
  //    is on the page; this site runs MathJax 3, so bridge that call. Registered before
  //    embed-amd.js registers its own "load" handler, so it runs first.
  window.addEventListener("load", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub) return;
    mj.Hub = { Queue: function () {
      for (var i = 0; i < arguments.length; i++) {
        var job = arguments[i];
        if (Array.isArray(job) && job[0] === "Typeset" && mj.typesetPromise) {
          mj.typesetPromise(job[2] ? [job[2]] : undefined).catch(function () {});
        }
      }
    } };
  });
})();
"""


def _write_setup_js(static_root: Path) -> str:
    """Write the widget setup script; return its URL relative to ``_static/``."""
    rel = f"{STATIC_PREFIX}/widgets-setup.js"
    text = WIDGETS_SETUP_JS % {"dist": f"{HTML_MANAGER.dest}/dist/"}
    out = static_root / rel
    if not out.is_file() or out.read_text() != text:
        out.write_text(text)
    return rel


def _drop_sphinx_thebe(app: Sphinx) -> None:
    """Disconnect sphinx-thebe's event handlers and its stylesheet (see module docstring)."""
    for listeners in app.events.listeners.values():
        for listener in list(listeners):
            if getattr(listener.handler, "__module__", "").startswith("sphinx_thebe"):
                app.disconnect(listener.id)
    app.registry.css_files = [
        (name, attrs) for name, attrs in app.registry.css_files if name != "sphinx-thebe.css"
    ]


#: Settings that change what a chapter computes without changing its code (the AFHQ chapter's
#: data, checkpoint and FID network; the device), so they key the execution cache too.
RUN_SETTINGS = ("SCORETUT_DEVICE", "SCORETUT_AFHQ_DATA", "SCORETUT_AFHQ_CKPT", "SCORETUT_INCEPTION_WEIGHTS")


def _library_key(root: Path, scale: str) -> str:
    """Hash of the ``scoretut`` package source, the run scale and :data:`RUN_SETTINGS`."""
    digest = hashlib.sha256(scale.encode())
    digest.update(json.dumps({k: os.environ.get(k) for k in RUN_SETTINGS}).encode())
    for path in sorted((root / "scoretut").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _setup_execution_cache(app: Sphinx, config: Config, root: Path) -> None:
    scale = os.environ.get("SCORETUT_SCALE", "fast").strip().lower() or "fast"
    key = _library_key(root, scale)
    cache = Path(app.outdir).parent / ".jupyter_cache" / scale
    stamp = cache / "scoretut-library-key.txt"
    if cache.is_dir() and (not stamp.is_file() or stamp.read_text().strip() != key):
        logger.info(f"scoretut_site: scoretut source changed; emptying {cache}")
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key + "\n")
    config.nb_execution_cache_path = str(cache)
    if scale == "full":  # GPU-scale cells (training a U-Net) outlast the CPU per-cell limit
        config.nb_execution_timeout = -1
    # An "env" config value: when it changes Sphinx re-reads every page (so they re-execute).
    config.scoretut_library_key = key


def _on_config_inited(app: Sphinx, config: Config) -> None:
    root = Path(app.srcdir)
    _setup_execution_cache(app, config, root)
    cache = (root / config.scoretut_vendor_dir).resolve()
    static_root = cache / "static"
    for pkg in PACKAGES:
        _extract(pkg, _fetch(pkg, cache), static_root)
    setup_js = _write_setup_js(static_root)
    config.html_static_path = [*config.html_static_path, str(static_root), str(SITE_STATIC)]

    # myst-nb adds these, in this order, to every page that embeds widget state.
    config.nb_ipywidgets_js = {
        _static_url(REQUIREJS, "require.js"): {},
        setup_js: {},
        # The CDN attribute is rewritten per page by _on_page_context.
        _static_url(HTML_MANAGER, "dist/embed-amd.js"): {"data-jupyter-widgets-cdn": "./"},
    }
    config.mathjax_path = _static_url(MATHJAX, "es5/tex-mml-chtml.js")
    _drop_sphinx_thebe(app)

    # Kernels are started by myst-nb/jupyter-cache as child processes and inherit these.
    paths = [str(root.resolve()), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"


#: Inline script for widget pages. pydata-sphinx-theme's Font Awesome JS watches the DOM and
#: swaps every ``<i class="fa ...">`` for an ``<svg>``; the ipywidgets Play button later
#: sets ``className`` on its ``<i>`` child, which is then gone, and throws. Icons that are
#: in the page when it loads (the theme's) are still converted; widget icons keep the Font
#: Awesome webfont that embed-amd.js ships.
FONTAWESOME_NO_OBSERVER_JS = (
    "window.FontAwesomeConfig = Object.assign(window.FontAwesomeConfig || {}, "
    "{observeMutations: false});"
)


def _on_page_context(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any],
                     doctree: Any) -> None:
    """Finish the widget scripts of a page that embeds widgets (myst-nb added them)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    embed = _static_url(HTML_MANAGER, "dist/embed-amd.js")
    local_modules = context["pathto"](f"_static/{STATIC_PREFIX}/npm/", 1)
    for i, js in enumerate(scripts):
        if str(getattr(js, "filename", "")).endswith(embed):
            # Module base URL: a local, page-relative folder instead of a CDN.
            attrs = {**js.attributes, "data-jupyter-widgets-cdn": local_modules}
            scripts[i] = type(js)(js.filename, priority=js.priority, **attrs)
            app.add_js_file(None, body=FONTAWESOME_NO_OBSERVER_JS, priority=100)
            break


def _offer_notebook(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any],
                    doctree: Any) -> None:
    """Write a chapter's ``.ipynb`` (:mod:`scoretut_notebooks`) next to its ``.md`` source in
    ``_sources/`` and name it in ``ipynb_source``, so the theme's download menu lists it."""
    if app.builder.format != "html" or doctree is None:
        return
    source = Path(app.env.doc2path(pagename))
    if source.suffix != ".md" or not is_notebook(source):
        return
    name = f"{pagename}.ipynb"
    write_notebook(source, Path(app.outdir) / "_sources" / name, Path(app.srcdir) / "book" / "references.bib")
    context["ipynb_source"] = name


#: The theme renders its download links with ``target="_blank"``: a browser then shows the
#: JSON or Markdown in a tab. ``download`` makes them save the file instead.
_DOWNLOAD_LINK = re.compile(r'(<a href="[^"]*_sources/[^"]*\.(?:ipynb|md)") target="_blank"')


def _download_links(app: Sphinx, exception: Exception | None) -> None:
    """Give the download menu's ``.ipynb`` and ``.md`` links the ``download`` attribute."""
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        new = _DOWNLOAD_LINK.sub(r"\1 download", html)
        if new != html:
            page.write_text(new, encoding="utf-8")


#: Folder of this extension's own CSS and JS (point 7 of the module docstring).
SITE_STATIC = Path(__file__).resolve().parent / "static"


def _caption_alt(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Give every image in a captioned figure its caption as alt text."""
    for figure in doctree.findall(nodes.figure):
        captions = [c for c in figure.children if isinstance(c, nodes.caption)]
        if not captions:
            continue
        text = " ".join(captions[0].astext().split())
        for image in figure.findall(nodes.image):
            alt = image.get("alt", "")
            if not alt or alt == image.get("uri") or "/" in alt or alt.endswith(".png"):
                image["alt"] = text


def _strip_source_maps(app: Sphinx, exception: Exception | None) -> None:
    """Delete ``*.map`` files from the output and the comments that point at them."""
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    removed = 0
    for path in list(out.rglob("*.map")):
        removed += path.stat().st_size
        path.unlink()
    for path in [*out.rglob("*.js"), *out.rglob("*.css")]:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if "sourceMappingURL=" in text:
            lines = [ln for ln in text.splitlines(keepends=True)
                     if not ln.lstrip().startswith(("//# sourceMappingURL=", "/*# sourceMappingURL="))]
            path.write_text("".join(lines), encoding="utf-8", errors="surrogateescape")
    if removed:
        logger.info(f"scoretut_site: removed {removed / 1e6:.1f} MB of source maps")


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the extension (see the module docstring)."""
    import scoretut_bib  # next to this file; local_extensions puts book/_ext on sys.path

    scoretut_bib.register()
    app.add_css_file("scoretut-site.css")
    app.add_js_file("scoretut-site.js")
    app.connect("doctree-resolved", _caption_alt)
    app.connect("build-finished", _strip_source_maps)
    app.add_config_value("scoretut_vendor_dir", ".cache/vendor", "env", [str])
    app.add_config_value("scoretut_library_key", "", "env", [str])  # set in config-inited
    # Run before myst-nb and sphinx.ext.mathjax read their settings.
    app.connect("config-inited", _on_config_inited, priority=100)
    # After myst-nb (priority 500) has added the per-page widget scripts.
    app.connect("html-page-context", _on_page_context, priority=900)
    # Before the theme (priority 500) builds the download menu from ipynb_source.
    app.connect("html-page-context", _offer_notebook, priority=400)
    app.connect("build-finished", _download_links)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
