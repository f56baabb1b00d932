"""Precomputed, kernel-free animation widgets for the book.

The book is a static site, so an "interactive" figure is a stack of PNG frames computed
while the chapter executes, plus widgets wired together **in the browser** with
:func:`ipywidgets.jslink` (no Python callbacks, so no kernel is needed)::

    Play ──jslink── IntSlider ──jslink── Stack([Image, Image, ...]).selected_index
                              └─jslink── Stack([HTML("t = 0.00"), ...]).selected_index

myst-nb stores the widget state in the page and the vendored html-manager renders it.

Typical use in a chapter::

    from scoretut import viz
    frames = viz.point_cloud_frames(clouds, titles=[f"t = {t:.2f}" for t in ts])
    viz.frames_widget(frames, labels=[f"t = {t:.2f}" for t in ts])

Everything here uses a fixed figure size and dpi (never ``bbox_inches="tight"``), so all
frames of a widget have the same pixel size, and PNGs are palette-quantized so a 30-frame
widget stays a few hundred kB in the page.

**The book's figure style.** Importing this module applies :data:`BOOK_STYLE` (font sizes,
resolution, a perceptual colormap, mathtext) to matplotlib and, inside IPython, makes every
inline figure fit the text column (:func:`fit_to_column`): a figure wider than
:data:`COLUMN_IN` is narrowed to it, and a single row of panels that would leave each panel
narrower than :data:`MIN_PANEL_IN` is stacked into rows. A figure shown on the page at its
natural size keeps its text at ``pt * FIGURE_DPI / 72`` CSS px: at least 12 px for 9-pt tick
labels. Widget frames use the same style at :data:`DPI` (tick labels 11 px).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets
import matplotlib as mpl
import numpy as np
from ipywidgets.widgets.widget_link import Link
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec

from scoretut.fmt import sig

__all__ = [
    "BOOK_STYLE",
    "COLUMN_IN",
    "COLUMN_PX",
    "DPI",
    "FIGSIZE",
    "FIELD_CMAP",
    "FIGURE_DPI",
    "MIN_PANEL_IN",
    "MARGINS",
    "PNG_MAGIC",
    "FramePlayer",
    "fig_to_png",
    "fit_to_column",
    "frames_widget",
    "html_table",
    "new_figure",
    "point_cloud_frames",
    "point_cloud_panel_frames",
    "render_frames",
    "shared_limits",
    "trajectory_frames",
    "use_book_style",
    "vector_field_frames",
]

#: Width of the book's text column in CSS px in a 1280 px wide window (sphinx-book-theme
#: 1.3 with both sidebars shown; measured in Chromium on the built site).
COLUMN_PX = 688
#: Pixels per inch of every inline figure (matplotlib's ``figure.dpi``).
FIGURE_DPI = 100
#: The column width in figure inches: inline figures are made at most this wide.
COLUMN_IN = COLUMN_PX / FIGURE_DPI
#: Narrowest panel, in inches, of a row of panels; a wider row is stacked into rows.
MIN_PANEL_IN = 2.2

#: The book's matplotlib style (applied when this module is imported). Tick labels are 9 pt:
#: 12.5 px on the page for a figure at its natural size, 11 px in widget frames.
BOOK_STYLE: dict[str, Any] = {
    "figure.dpi": FIGURE_DPI,
    "savefig.dpi": "figure",
    "figure.figsize": (COLUMN_IN, 0.42 * COLUMN_IN),
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11,
    "image.cmap": "viridis",
    "axes.formatter.use_mathtext": True,
    "mathtext.fontset": "dejavusans",
}

#: Dots per inch of every frame; with :data:`FIGSIZE` this gives 317x317 px frames.
DPI = 88
#: Default frame size in inches.
FIGSIZE = (3.6, 3.6)
#: First eight bytes of every PNG file.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Colors kept when a frame is palette-quantized (plots use few colors; 64 is plenty).
PNG_COLORS = 64

Limits = tuple[tuple[float, float], tuple[float, float]]

#: Colormap of arrow magnitudes: viridis without its palest yellow, so that every arrow
#: stays visible on a white background (a diverging map made the middle values white).
FIELD_CMAP = mpl.colors.ListedColormap(mpl.colormaps["viridis"](np.linspace(0.0, 0.85, 256)),
                                       name="viridis_on_white")


#: Default margins (figure fractions) around the axes of a frame.
MARGINS = {"left": 0.15, "right": 0.96, "bottom": 0.1, "top": 0.9}


#: Height, in inches, of a row's titles and tick labels: kept when a figure is narrowed.
_TEXT_IN = 0.8


def _single_row(fig: Figure) -> list[Axes] | None:
    """The axes of ``fig`` if they are exactly one row of subplots (no colorbars, insets)."""
    axes = fig.get_axes()
    specs = [ax.get_subplotspec() for ax in axes]
    if not axes or any(sp is None for sp in specs):
        return None
    grid = specs[0].get_gridspec()
    if any(sp.get_gridspec() is not grid for sp in specs) or grid.nrows != 1:
        return None
    if sorted(sp.colspan.start for sp in specs) != list(range(len(axes))) or grid.ncols != len(axes):
        return None
    return sorted(axes, key=lambda ax: ax.get_subplotspec().colspan.start)


def fit_to_column(fig: Figure, column_in: float = COLUMN_IN,
                  min_panel_in: float = MIN_PANEL_IN) -> Figure:
    """Make ``fig`` at most ``column_in`` inches wide, stacking a row of panels if needed.

    A figure drawn wider than the page column is shrunk by the browser, and its text with
    it. Instead the figure is narrowed to the column before it is drawn, so its text keeps
    its point size. A single row of ``n`` subplots whose panels would become narrower than
    ``min_panel_in`` is re-laid out as ``r = ceil(n / k)`` rows of ``ceil(n / r)`` panels
    (``k`` panels of ``min_panel_in`` fit the column). Each panel keeps its aspect ratio
    (the height of titles and tick labels is kept as is); the figure is then laid out again
    (its layout engine if it has one, else ``tight_layout``). Narrower figures are
    returned unchanged. Returns ``fig``.
    """
    w, h = fig.get_size_inches()
    if w <= column_in * 1.001:
        return fig
    row = _single_row(fig)
    n, rows = (len(row), 1) if row else (1, 1)
    if row and column_in / n < min_panel_in:
        rows = math.ceil(n / max(1, int(column_in // min_panel_in)))
        cols = math.ceil(n / rows)
        grid = GridSpec(rows, cols, figure=fig)
        for i, ax in enumerate(row):
            ax.set_subplotspec(grid[i // cols, i % cols])
            if i % cols == 0 and len(ax.get_shared_y_axes().get_siblings(ax)) > 1:
                ax.tick_params(labelleft=True)  # sharey hid them outside the first column
        scale = (column_in / cols) / (w / n)
    else:
        scale = column_in / w
    panel_h = max(h - _TEXT_IN, 0.3 * h)
    fig.set_size_inches(column_in, rows * (panel_h * scale + (h - panel_h)), forward=False)
    if fig.get_layout_engine() is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig.tight_layout()
    return fig


def _fit_inline_figures() -> None:
    """Inside IPython, run :func:`fit_to_column` on every figure the inline backend shows.

    The inline backend registers a PNG formatter for :class:`Figure`; it is wrapped here
    (and re-wrapped before each cell, in case the backend was set up again).
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is an ipywidgets dependency
        return
    shell = get_ipython()
    if shell is None:
        return
    import matplotlib.pyplot as plt

    backend = str(mpl.rcParams["backend"])
    if "inline" in backend and not plt.get_fignums():
        # pyplot loads its backend lazily, at the first figure, and the inline backend
        # registers its formatter then; load it now so the formatter can be wrapped.
        plt.switch_backend(backend)

    def wrap(*_: Any) -> None:
        formatter = shell.display_formatter.formatters["image/png"]
        show = formatter.type_printers.get(Figure)
        if show is None or getattr(show, "fits_column", False):
            return

        def fitted(fig: Figure, *args: Any, **kwargs: Any) -> Any:
            return show(fit_to_column(fig), *args, **kwargs)

        fitted.fits_column = True  # type: ignore[attr-defined]
        formatter.for_type(Figure, fitted)

    wrap()
    if not getattr(shell, "_scoretut_fits_column", False):
        shell.events.register("pre_run_cell", wrap)
        shell._scoretut_fits_column = True


def use_book_style() -> None:
    """Apply :data:`BOOK_STYLE` and fit inline figures to the column (done on import)."""
    _fit_inline_figures()
    mpl.rcParams.update(BOOK_STYLE)


def new_figure(
    figsize: tuple[float, float] = FIGSIZE, margins: dict[str, float] | None = None
) -> tuple[Figure, Axes]:
    """Return a figure and axes that are not registered with pyplot.

    Such figures never show up as a stray inline output in a notebook and need no
    ``plt.close``; they are freed when garbage collected. ``margins`` updates
    :data:`MARGINS` (keys of :meth:`Figure.subplots_adjust`), e.g. ``{"right": 0.85}`` to
    make room for a twin axis.
    """
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    # Fixed margins instead of a layout engine: every frame gets the same axes box, and
    # constrained/tight layout would cost more than the drawing itself.
    fig.subplots_adjust(**{**MARGINS, **(margins or {})})
    return fig, fig.add_subplot()


def _png_bytes(fig: Figure, dpi: int, quantize: bool) -> bytes:
    buf = io.BytesIO()
    # No "Software" metadata: identical figures give identical bytes, whatever matplotlib version.
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    if not quantize:
        return buf.getvalue()
    from PIL import Image  # Pillow is a matplotlib dependency

    buf.seek(0)
    with Image.open(buf) as img:
        rgb = img.convert("RGB")
    pal = rgb.quantize(colors=PNG_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    pal.save(out, format="PNG", optimize=True)
    return out.getvalue()


def fig_to_png(fig: Figure, dpi: int = DPI, *, quantize: bool = True) -> bytes:
    """Render ``fig`` to PNG bytes at a fixed ``dpi`` and close it.

    Works for pyplot figures (they are closed with ``plt.close``) and for figures from
    :func:`new_figure`. ``quantize`` reduces the image to a small palette, which makes plot
    PNGs several times smaller with no visible change.
    """
    png = _png_bytes(fig, dpi, quantize)
    import matplotlib.pyplot as plt

    plt.close(fig)  # no-op for figures that pyplot does not manage
    return png


def render_frames(
    draw: Callable[[Axes, int], Any],
    n_frames: int,
    *,
    figsize: tuple[float, float] = FIGSIZE,
    dpi: int = DPI,
    clear: bool = True,
    margins: dict[str, float] | None = None,
) -> list[bytes]:
    """Call ``draw(ax, i)`` for ``i in range(n_frames)`` and return one PNG per call.

    One figure is reused for all frames, so the frames share pixel size. With ``clear``
    (the default) the axes are cleared before each call and ``draw`` sets everything it
    needs (limits, title, labels). With ``clear=False`` the axes persist: ``draw`` creates
    its artists when ``i == 0`` and only updates their data afterwards, which is several
    times faster for long animations (and is needed for anything ``ax.clear()`` does not
    remove, such as a ``twinx`` axis). ``margins`` is passed to :func:`new_figure`.
    """
    if n_frames < 1:
        raise ValueError("render_frames needs at least one frame")
    fig, ax = new_figure(figsize, margins)
    frames = []
    for i in range(n_frames):
        if clear:
            ax.clear()
        draw(ax, i)
        frames.append(_png_bytes(fig, dpi, quantize=True))
    return frames


def shared_limits(arrays: Sequence[np.ndarray], pad: float = 0.05, quantile: float = 1.0) -> Limits:
    """Axis limits ``((xmin, xmax), (ymin, ymax))`` covering every ``(n, 2)`` array.

    ``quantile < 1`` ignores the most extreme points (useful when a few samples explode);
    ``pad`` widens each range by that fraction of its length.
    """
    pts = np.concatenate([np.asarray(a, dtype=float).reshape(-1, 2) for a in arrays])
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    lo = np.quantile(pts, 1.0 - quantile, axis=0)
    hi = np.quantile(pts, quantile, axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * span, hi + pad * span
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def _titles(titles: Sequence[str] | None, n: int) -> list[str]:
    if titles is None:
        return [f"frame {i + 1}/{n}" for i in range(n)]
    if len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} frames")
    return list(titles)


def point_cloud_frames(
    clouds: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    lims: Limits | None = None,
    size: float = 3.0,
    color: str = "tab:blue",
    alpha: float = 0.6,
    reference: np.ndarray | None = None,
    figsize: tuple[float, float] = FIGSIZE,
    dpi: int = DPI,
) -> list[bytes]:
    """Render 2D point clouds (a sequence of ``(n, 2)`` arrays) as PNG frames.

    All frames share axis limits (``lims``, or :func:`shared_limits` of all clouds) and an
    equal aspect ratio. ``reference`` is an optional ``(m, 2)`` array drawn in light grey
    under every frame (e.g. the data distribution). Torch tensors are accepted.
    """
    clouds = [np.asarray(_to_numpy(c), dtype=float).reshape(-1, 2) for c in clouds]
    titles_ = _titles(titles, len(clouds))
    ref = None if reference is None else np.asarray(_to_numpy(reference), dtype=float).reshape(-1, 2)
    (x0, x1), (y0, y1) = lims or shared_limits(clouds + ([ref] if ref is not None else []))

    artists: dict[str, Any] = {}

    def draw(ax: Axes, i: int) -> None:
        if i == 0:
            if ref is not None:
                ax.scatter(ref[:, 0], ref[:, 1], s=size, color="0.8", linewidths=0)
            artists["pts"] = ax.scatter(clouds[0][:, 0], clouds[0][:, 1], s=size, color=color,
                                        alpha=alpha, linewidths=0)
            _style(ax, (x0, x1), (y0, y1))
        else:
            artists["pts"].set_offsets(clouds[i])
        ax.set_title(titles_[i], fontsize=10)

    return render_frames(draw, len(clouds), figsize=figsize, dpi=dpi, clear=False)


def point_cloud_panel_frames(
    panels: Sequence[Sequence[np.ndarray]],
    panel_titles: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    *,
    lims: Sequence[Limits | Sequence[Limits] | None] | None = None,
    size: float = 2.0,
    color: str = "tab:blue",
    alpha: float = 0.5,
    panel_size: float = 2.6,
    dpi: int = DPI,
) -> list[bytes]:
    """Render several 2D point clouds side by side per frame, e.g. one data set under four SDEs.

    ``panels[p][i]`` is the ``(n, 2)`` cloud of panel ``p`` in frame ``i`` (all panels have the
    same number of frames). ``panel_titles[p]`` heads panel ``p``; ``titles[i]`` heads frame
    ``i``. ``lims[p]`` is ``None`` (limits covering all frames of that panel), one
    ``((x0, x1), (y0, y1))`` for every frame, or a list of them, one per frame (a panel whose
    scale changes over time, then read its tick labels).
    """
    clouds = [[np.asarray(_to_numpy(c), dtype=float).reshape(-1, 2) for c in panel] for panel in panels]
    n_panels, n_frames = len(clouds), len(clouds[0]) if clouds else 0
    if n_panels == 0 or n_frames == 0 or any(len(c) != n_frames for c in clouds):
        raise ValueError("panels must be a non-empty list of equally long lists of (n, 2) clouds")
    heads = _titles(titles, n_frames)
    names = list(panel_titles) if panel_titles is not None else [""] * n_panels
    lims_ = list(lims) if lims is not None else [None] * n_panels
    if len(names) != n_panels or len(lims_) != n_panels:
        raise ValueError(f"need one panel title and one lims entry per panel ({n_panels})")
    per_frame = []  # per_frame[p][i] = limits of panel p in frame i
    for p, lim in enumerate(lims_):
        arr = np.asarray(shared_limits(clouds[p]) if lim is None else lim, dtype=float)
        if arr.shape == (2, 2):
            arr = np.broadcast_to(arr, (n_frames, 2, 2))
        if arr.shape != (n_frames, 2, 2):
            raise ValueError(f"lims[{p}] must be ((x0, x1), (y0, y1)) or one such pair per frame")
        per_frame.append(arr)

    # Panels side by side while the row fits the column, else stacked in rows (frames are
    # shown at their natural size, so their text keeps the book style's size).
    rows = math.ceil(panel_size * n_panels * dpi / COLUMN_PX)
    cols = math.ceil(n_panels / rows)
    head_in = 0.35
    fig = Figure(figsize=(panel_size * cols, (panel_size + 0.25) * rows + head_in))
    FigureCanvasAgg(fig)
    height = fig.get_size_inches()[1]
    fig.subplots_adjust(left=0.1 / cols ** 0.5, right=0.99, bottom=0.3 / height,
                        top=1 - (head_in + 0.1) / height, wspace=0.3, hspace=0.35)
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[n_panels:]:
        ax.remove()
    axes = grid[:n_panels]
    dots = [ax.scatter(c[0][:, 0], c[0][:, 1], s=size, color=color, alpha=alpha, linewidths=0)
            for ax, c in zip(axes, clouds)]  # fmt: skip
    for ax, name in zip(axes, names):
        ax.set_title(name, fontsize=10)
    head = fig.suptitle(heads[0], fontsize=11)
    frames = []
    for i in range(n_frames):
        for p, ax in enumerate(axes):
            dots[p].set_offsets(clouds[p][i])
            _style(ax, tuple(per_frame[p][i, 0]), tuple(per_frame[p][i, 1]))
        head.set_text(heads[i])
        frames.append(_png_bytes(fig, dpi, quantize=True))
    return frames


def trajectory_frames(
    paths: Any,
    titles: Sequence[str] | None = None,
    *,
    estimates: Any = None,
    reference: np.ndarray | None = None,
    lims: Limits | Sequence[Limits] | None = None,
    figsize: tuple[float, float] = FIGSIZE,
    dpi: int = DPI,
) -> list[bytes]:
    """Render the paths of a few 2D points step by step, one PNG per step.

    ``paths`` has shape ``(n_frames, k, 2)``: the positions of ``k`` points at every step. Frame
    ``i`` draws each point's path up to step ``i`` (a line), its position at step ``i`` (a dot)
    and, with ``estimates`` of the same shape, where the point is headed at that step — e.g. the
    denoiser output ``D(x_i; σ_i)`` of a diffusion sampler — as a cross of the same colour joined
    to the dot by a dashed segment. ``reference`` ``(m, 2)`` is drawn in light grey under every
    frame (the data). ``lims`` is one ``((x0, x1), (y0, y1))`` for all frames, or one per frame
    (a view that zooms in as the points settle); by default it covers every path.
    """
    pos = np.asarray(_to_numpy(paths), dtype=float)
    if pos.ndim != 3 or pos.shape[2] != 2 or pos.shape[0] < 1:
        raise ValueError(f"paths must have shape (n_frames, k, 2), got {pos.shape}")
    est = None if estimates is None else np.asarray(_to_numpy(estimates), dtype=float)
    if est is not None and est.shape != pos.shape:
        raise ValueError(f"estimates must have the shape of paths {pos.shape}, got {est.shape}")
    n_frames, k = pos.shape[:2]
    heads = _titles(titles, n_frames)
    box = np.asarray(lims if lims is not None else shared_limits([pos.reshape(-1, 2)]), dtype=float)
    box = np.broadcast_to(box, (n_frames, 2, 2)) if box.shape == (2, 2) else box
    if box.shape != (n_frames, 2, 2):
        raise ValueError("lims must be ((x0, x1), (y0, y1)) or one such pair per frame")
    ref = None if reference is None else np.asarray(_to_numpy(reference), dtype=float).reshape(-1, 2)
    colors = [f"C{j % 10}" for j in range(k)]
    art: dict[str, Any] = {}

    def draw(ax: Axes, i: int) -> None:
        if i == 0:
            if ref is not None:
                ax.scatter(ref[:, 0], ref[:, 1], s=2, color="0.8", linewidths=0)
            art["lines"] = [ax.plot([], [], color=c, lw=1, alpha=0.7)[0] for c in colors]
            art["dots"] = ax.scatter(pos[0, :, 0], pos[0, :, 1], s=22, c=colors, zorder=3)
            if est is not None:
                art["links"] = [ax.plot([], [], "--", color=c, lw=0.8)[0] for c in colors]
                art["est"] = ax.scatter(est[0, :, 0], est[0, :, 1], s=40, c=colors, marker="x", zorder=4)
        for j in range(k):
            art["lines"][j].set_data(pos[: i + 1, j, 0], pos[: i + 1, j, 1])
            if est is not None:
                art["links"][j].set_data([pos[i, j, 0], est[i, j, 0]], [pos[i, j, 1], est[i, j, 1]])
        art["dots"].set_offsets(pos[i])
        if est is not None:
            art["est"].set_offsets(est[i])
        _style(ax, tuple(box[i, 0]), tuple(box[i, 1]))
        ax.set_title(heads[i], fontsize=10)

    return render_frames(draw, n_frames, figsize=figsize, dpi=dpi, clear=False)


def _style(ax: Axes, xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal", adjustable="box")


def vector_field_frames(
    fields: Sequence[Callable[[np.ndarray], np.ndarray]],
    lims: Limits,
    titles: Sequence[str] | None = None,
    *,
    grid: int = 17,
    normalize: bool = True,
    clouds: Sequence[np.ndarray] | None = None,
    color: str = "tab:red",
    figsize: tuple[float, float] | None = None,
    dpi: int = DPI,
) -> list[bytes]:
    """Render one 2D vector field per frame (e.g. a score ``∇log p_t`` at several ``t``).

    Each ``fields[i]`` maps an ``(m, 2)`` array of points to an ``(m, 2)`` array of vectors
    (numpy or torch). It is evaluated on a ``grid x grid`` lattice over ``lims``. With
    ``normalize`` every arrow has unit length and the magnitude is shown by color, which
    keeps both small and huge scores readable (color is ``log10 |v|`` on one scale shared by
    all frames, :data:`FIELD_CMAP`, with a colorbar); without it arrow lengths are
    proportional to ``|v|``, again on one shared scale. ``clouds[i]`` (optional) is
    scattered under frame ``i``. ``figsize`` defaults to :data:`FIGSIZE`, widened for the
    colorbar.
    """
    if figsize is None:
        figsize = (FIGSIZE[0] + (0.9 if normalize else 0.0), FIGSIZE[1])
    (x0, x1), (y0, y1) = lims
    xs, ys = np.meshgrid(np.linspace(x0, x1, grid), np.linspace(y0, y1, grid))
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1)
    titles_ = _titles(titles, len(fields))
    if clouds is not None and len(clouds) != len(fields):
        raise ValueError(f"got {len(clouds)} clouds for {len(fields)} fields")
    clouds_ = None if clouds is None else [np.asarray(_to_numpy(c), dtype=float).reshape(-1, 2) for c in clouds]

    # Evaluate every field first so that arrow scale and colors are shared by all frames.
    vecs = [np.asarray(_to_numpy(f(pts)), dtype=float).reshape(-1, 2) for f in fields]
    mags = [np.linalg.norm(v, axis=1) for v in vecs]
    spacing = min((x1 - x0), (y1 - y0)) / max(grid - 1, 1)
    if normalize:
        vecs = [v / np.maximum(m, 1e-12)[:, None] for v, m in zip(vecs, mags)]
        longest = 1.0
        colors = [np.log10(np.maximum(m, 1e-12)) for m in mags]
        finite = np.concatenate(colors)
        finite = finite[np.isfinite(finite)]
        clim = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    else:
        longest = max(float(np.nanmax(m)) for m in mags) or 1.0
    # scale_units="xy": an arrow of length `longest` spans 0.8 grid cells.
    kw: dict[str, Any] = {"angles": "xy", "pivot": "mid", "width": 0.005,
                          "scale_units": "xy", "scale": longest / (0.8 * spacing)}
    artists: dict[str, Any] = {}

    def draw(ax: Axes, i: int) -> None:
        vec = vecs[i]
        if i == 0:
            if clouds_ is not None:
                artists["pts"] = ax.scatter(clouds_[0][:, 0], clouds_[0][:, 1], s=2, color="0.6",
                                            linewidths=0)
            if normalize:
                artists["q"] = ax.quiver(pts[:, 0], pts[:, 1], vec[:, 0], vec[:, 1], colors[0],
                                         cmap=FIELD_CMAP, clim=clim, **kw)
                ax.figure.colorbar(artists["q"], ax=ax, shrink=0.8, pad=0.03,
                                   label=r"$\log_{10}\,|v|$")
            else:
                artists["q"] = ax.quiver(pts[:, 0], pts[:, 1], vec[:, 0], vec[:, 1], color=color, **kw)
            _style(ax, (x0, x1), (y0, y1))
        else:
            if clouds_ is not None:
                artists["pts"].set_offsets(clouds_[i])
            if normalize:
                artists["q"].set_UVC(vec[:, 0], vec[:, 1], colors[i])
            else:
                artists["q"].set_UVC(vec[:, 0], vec[:, 1])
        ax.set_title(titles_[i], fontsize=10)

    margins = {"right": 0.88} if normalize else None
    return render_frames(draw, len(fields), figsize=figsize, dpi=dpi, clear=False, margins=margins)


def _to_numpy(x: Any) -> Any:
    """Detach and move a torch tensor to numpy; pass anything else through."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x


def html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> Any:
    """A small HTML table for a chapter cell's output (it renders on the static site as is).

    Floats are shown with ``digits`` significant digits by :func:`scoretut.fmt.sig` (no
    negative zero, ``∞`` for inf, ``a×10ⁿ`` outside 1e-3..1e5); everything else with ``str``; all
    text is HTML-escaped. Returns an :class:`IPython.display.HTML` object.
    """
    import html

    from IPython.display import HTML

    def cell(v: Any) -> str:
        text = sig(v, digits) if isinstance(v, float | np.floating) else str(v)
        return html.escape(text)

    if any(len(r) != len(columns) for r in rows):
        raise ValueError(f"every row needs {len(columns)} cells, one per column")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return HTML(f'<table class="table scoretut-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


class FramePlayer(widgets.VBox):
    """A VBox holding a Play button, a slider, a frame label and a stack of frames.

    It renders as a plain ``VBox`` in the browser; the attributes below exist so that
    tests and chapters can reach the parts:

    ``play``, ``slider``, ``frames`` (Stack of Image), ``labels`` (Stack of HTML or None),
    ``links`` (the ``Link`` objects from :func:`ipywidgets.jslink` that wire them in JS).
    """

    play: widgets.Play
    slider: widgets.IntSlider
    frames: widgets.Stack
    labels: widgets.Stack | None
    links: tuple[Link, ...]


def frames_widget(
    frames: Sequence[bytes | Figure],
    labels: Sequence[str] | None = None,
    *,
    interval_ms: int = 250,
    description: str = "",
    repeat: bool = False,
    start: int = 0,
) -> FramePlayer:
    """Build a kernel-free player for precomputed frames.

    ``frames`` are PNG bytes or matplotlib figures (converted with :func:`fig_to_png`).
    ``labels`` (one short string per frame, e.g. ``"t = 0.35"``; HTML allowed) are shown
    next to the slider and switch with it; without labels the slider shows the frame
    number. ``interval_ms`` is the Play button's delay between frames. All wiring is
    :func:`ipywidgets.jslink`, so it works on the static site with no kernel.
    """
    pngs = [f if isinstance(f, bytes | bytearray) else fig_to_png(f) for f in frames]
    n = len(pngs)
    if n == 0:
        raise ValueError("frames_widget needs at least one frame")
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} frames")
    if not 0 <= start < n:
        raise ValueError(f"start={start} is not a frame index (0..{n - 1})")

    play = widgets.Play(value=start, min=0, max=n - 1, step=1, interval=interval_ms,
                        repeat=repeat, description="play", show_repeat=False)
    slider = widgets.IntSlider(value=start, min=0, max=n - 1, step=1, description=description,
                               readout=labels is None, continuous_update=True,
                               layout=widgets.Layout(width="16em"))
    images = [widgets.Image(value=bytes(p), format="png") for p in pngs]
    stack = widgets.Stack(images, selected_index=start)
    links = [
        widgets.jslink((play, "value"), (slider, "value")),
        widgets.jslink((slider, "value"), (stack, "selected_index")),
    ]
    label_stack = None
    controls: list[widgets.Widget] = [play, slider]
    if labels is not None:
        label_stack = widgets.Stack([widgets.HTML(value=str(s)) for s in labels], selected_index=start)
        links.append(widgets.jslink((slider, "value"), (label_stack, "selected_index")))
        controls.append(label_stack)

    box = FramePlayer([widgets.HBox(controls, layout=widgets.Layout(align_items="center")), stack])
    box.add_class("scoretut-frames")
    box.play, box.slider, box.frames, box.labels = play, slider, stack, label_stack
    box.links = tuple(links)
    return box


use_book_style()
