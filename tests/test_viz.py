"""Tests of scoretut.viz: PNG frames and the kernel-free (jslinked) frame player."""

from __future__ import annotations

import base64
import io
import json

import ipywidgets as widgets
import matplotlib
import numpy as np
import pytest
from ipywidgets.widgets.widget_link import Link
from PIL import Image

matplotlib.use("Agg")

from scoretut import viz  # noqa: E402


def _size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as img:
        return img.size


def _clouds(n_frames: int = 30, n_points: int = 1000, seed: int = 0) -> list[np.ndarray]:
    """A 2-D cloud drifting towards N(0, I), like a forward diffusion."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=(n_points, 2)) * [1.5, 0.3] + [1.0, 0.0]
    ts = np.linspace(0.0, 2.0, n_frames)
    return [x0 * np.exp(-t) + np.sqrt(1 - np.exp(-2 * t)) * rng.normal(size=x0.shape) for t in ts]


def _jslinks(player: viz.FramePlayer) -> set[tuple[int, str, int, str]]:
    return {(id(l.source[0]), l.source[1], id(l.target[0]), l.target[1]) for l in player.links}


# --- PNG helpers ------------------------------------------------------------------------

def test_fig_to_png_pyplot_figure_is_closed_and_fixed_size() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.0, 1.5))
    ax.plot([0, 1], [0, 1])
    png = viz.fig_to_png(fig, dpi=50)
    assert png.startswith(viz.PNG_MAGIC)
    assert _size(png) == (100, 75)
    assert not plt.fignum_exists(fig.number)


def test_fig_to_png_is_deterministic_and_quantized_is_smaller() -> None:
    def make() -> matplotlib.figure.Figure:
        fig, ax = viz.new_figure()
        ax.scatter(*np.random.default_rng(1).normal(size=(2, 500)), s=3)
        return fig

    a, b = viz.fig_to_png(make()), viz.fig_to_png(make())
    assert a == b, "same figure must give the same bytes (stable pages and caches)"
    full = viz.fig_to_png(make(), quantize=False)
    assert full.startswith(viz.PNG_MAGIC)
    assert len(a) < len(full)


def test_render_frames_calls_draw_per_frame_and_keeps_size() -> None:
    seen: list[int] = []

    def draw(ax, i: int) -> None:
        seen.append(i)
        ax.plot([0, 1], [0, i])
        ax.set_title(f"frame {i}")

    frames = viz.render_frames(draw, 4, figsize=(2.0, 2.0), dpi=40)
    assert seen == [0, 1, 2, 3]
    assert all(f.startswith(viz.PNG_MAGIC) for f in frames)
    assert {_size(f) for f in frames} == {(80, 80)}
    assert len(set(frames)) == 4
    with pytest.raises(ValueError):
        viz.render_frames(draw, 0)


def test_shared_limits_cover_all_points() -> None:
    clouds = [np.array([[0.0, 0.0], [1.0, 2.0]]), np.array([[-3.0, 1.0]])]
    (x0, x1), (y0, y1) = viz.shared_limits(clouds, pad=0.0)
    assert (x0, x1, y0, y1) == (-3.0, 1.0, 0.0, 2.0)
    (x0, x1), _ = viz.shared_limits(clouds, pad=0.1)
    assert x0 < -3.0 and x1 > 1.0


def test_point_cloud_frames_shape_titles_and_budget() -> None:
    clouds = _clouds()
    frames = viz.point_cloud_frames(clouds, [f"t = {t:.2f}" for t in np.linspace(0, 2, 30)],
                                    reference=clouds[0])
    assert len(frames) == 30
    assert all(f.startswith(viz.PNG_MAGIC) for f in frames)
    assert len({_size(f) for f in frames}) == 1, "all frames must share the pixel size"
    assert len(set(frames)) == 30
    # Budget: a 30-frame widget adds well under 1.5 MB (base64) to a page.
    assert sum(len(base64.b64encode(f)) for f in frames) < 1_000_000
    with pytest.raises(ValueError):
        viz.point_cloud_frames(clouds, ["only one title"])


def test_point_cloud_frames_accepts_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    frames = viz.point_cloud_frames([torch.randn(100, 2), torch.randn(100, 2)], lims=((-3, 3), (-3, 3)))
    assert len(frames) == 2 and frames[0].startswith(viz.PNG_MAGIC)


@pytest.mark.parametrize("normalize", [True, False])
def test_vector_field_frames(normalize: bool) -> None:
    sigmas = np.linspace(0.5, 2.0, 30)
    fields = [lambda p, s=s: -p / s**2 for s in sigmas]  # score of N(0, s^2 I)
    frames = viz.vector_field_frames(fields, ((-3, 3), (-3, 3)), [f"σ = {s:.2f}" for s in sigmas],
                                     normalize=normalize, clouds=_clouds())
    assert len(frames) == 30 and all(f.startswith(viz.PNG_MAGIC) for f in frames)
    assert len({_size(f) for f in frames}) == 1
    assert sum(len(base64.b64encode(f)) for f in frames) < 1_500_000
    with pytest.raises(ValueError):
        viz.vector_field_frames(fields, ((-3, 3), (-3, 3)), clouds=_clouds(n_frames=2))


# --- the frame player -------------------------------------------------------------------

def test_frames_widget_structure_and_links() -> None:
    frames = viz.render_frames(lambda ax, i: ax.plot([0, i]), 5, figsize=(1.0, 1.0), dpi=20)
    labels = [f"t = {t:.2f}" for t in np.linspace(0, 1, 5)]
    w = viz.frames_widget(frames, labels=labels, interval_ms=120, description="t")

    assert isinstance(w, widgets.VBox)
    assert w._model_name == "VBoxModel", "must render with the stock VBox view"
    controls, stack = w.children
    assert stack is w.frames and isinstance(stack, widgets.Stack)
    assert list(controls.children) == [w.play, w.slider, w.labels]

    assert isinstance(w.play, widgets.Play) and isinstance(w.slider, widgets.IntSlider)
    assert (w.play.min, w.play.max) == (0, 4) and (w.slider.min, w.slider.max) == (0, 4)
    assert w.play.interval == 120 and w.slider.description == "t"
    assert w.slider.readout is False, "the label stack replaces the numeric readout"

    assert [type(c) for c in stack.children] == [widgets.Image] * 5
    assert [bytes(c.value) for c in stack.children] == frames
    assert all(c.format == "png" and bytes(c.value).startswith(viz.PNG_MAGIC) for c in stack.children)
    assert [c.value for c in w.labels.children] == labels
    assert stack.selected_index == 0 and w.labels.selected_index == 0

    # Browser-side wiring only: jslinks, never Python observers.
    assert all(isinstance(l, Link) for l in w.links)
    assert _jslinks(w) == {
        (id(w.play), "value", id(w.slider), "value"),
        (id(w.slider), "value", id(stack), "selected_index"),
        (id(w.slider), "value", id(w.labels), "selected_index"),
    }
    assert not w.slider._trait_notifiers.get("value", {}).get("change")
    assert not w.play._trait_notifiers.get("value", {}).get("change")


def test_frames_widget_without_labels_shows_readout() -> None:
    w = viz.frames_widget([viz.PNG_MAGIC + b"x"] * 3)
    assert w.labels is None and w.slider.readout is True
    assert len(w.links) == 2 and w.slider.max == 2
    assert list(w.children[0].children) == [w.play, w.slider]


def test_frames_widget_accepts_figures_and_start() -> None:
    figs = []
    for i in range(3):
        fig, ax = viz.new_figure((1.0, 1.0))
        ax.plot([0, i])
        figs.append(fig)
    w = viz.frames_widget(figs, start=2)
    assert all(bytes(img.value).startswith(viz.PNG_MAGIC) for img in w.frames.children)
    assert w.slider.value == w.play.value == w.frames.selected_index == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"frames": []}, {"frames": [b"a", b"b"], "labels": ["x"]}, {"frames": [b"a"], "start": 1}],
)
def test_frames_widget_rejects_bad_input(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        viz.frames_widget(**kwargs)


def test_frames_widget_state_is_embeddable() -> None:
    """The state that myst-nb embeds serializes, with the PNGs as binary buffers."""
    w = viz.frames_widget([viz.PNG_MAGIC + bytes([i]) for i in range(3)], labels=["a", "b", "c"])
    state = widgets.Widget.get_manager_state(drop_defaults=True, widgets=None)["state"]
    mine = {m.model_id for m in (w, w.play, w.slider, w.frames, w.labels, *w.frames.children, *w.links)}
    assert mine <= set(state)
    json.dumps(state)  # must be JSON-serializable (buffers are base64 there)
    image_state = state[w.frames.children[0].model_id]
    assert image_state["buffers"], "Image.value must travel as a binary buffer"


# --- multi-panel point clouds -------------------------------------------------------------

def test_point_cloud_panel_frames_one_png_per_frame_panels_side_by_side() -> None:
    clouds = _clouds(n_frames=5, n_points=300)
    one = viz.point_cloud_panel_frames([clouds], ["a"], panel_size=2.0, dpi=50)
    three = viz.point_cloud_panel_frames([clouds, clouds, clouds], ["a", "b", "c"],
                                         [f"t = {i}" for i in range(5)], panel_size=2.0, dpi=50)
    assert len(three) == 5 and all(p.startswith(viz.PNG_MAGIC) for p in three)
    # 3 panels x 2 in x 50 dpi wide; (2 in + 0.25 in of labels + 0.35 in of title) tall
    assert {_size(p) for p in three} == {(300, 130)}
    assert {_size(p) for p in one} == {(100, 130)}
    assert len(set(three)) == 5, "the clouds move, so every frame differs"


def test_point_cloud_panel_frames_limits_fixed_or_per_frame() -> None:
    still = [_clouds(n_frames=1, n_points=200)[0]] * 3
    same = ["t"] * 3
    fixed = viz.point_cloud_panel_frames([still], titles=same, lims=[((-3, 3), (-3, 3))], dpi=40)
    assert len(set(fixed)) == 1, "same cloud and limits: identical frames"
    zoom = [((-3 * k, 3 * k), (-3 * k, 3 * k)) for k in (1, 2, 4)]
    moving = viz.point_cloud_panel_frames([still], titles=same, lims=[zoom], dpi=40)
    assert moving[0] == fixed[0] and len(set(moving)) == 3, "per-frame limits change the picture"
    with pytest.raises(ValueError, match="lims"):
        viz.point_cloud_panel_frames([still], lims=[zoom[:2]])
    with pytest.raises(ValueError, match="equally long"):
        viz.point_cloud_panel_frames([still, still[:2]])


def test_html_table_formats_and_escapes() -> None:
    t = viz.html_table(["h", "a<b"], [[0.1234567, "x&y"], [np.float32(2.5), 3],
                                      [-1e-9 * 0, float("inf")]], digits=3)
    html = t.data
    assert html.count("<tr>") == 4 and "<th>a&lt;b</th>" in html
    assert "<td>0.123</td>" in html and "<td>2.50</td>" in html and "<td>x&amp;y</td>" in html
    assert "<td>-0" not in html and "<td>∞</td>" in html  # scoretut.fmt.sig
    with pytest.raises(ValueError, match="2 cells"):
        viz.html_table(["a", "b"], [[1]])


# --- trajectories of a few points ---------------------------------------------------------

def test_trajectory_frames_one_png_per_step_with_estimates() -> None:
    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 2)) * 5
    target = rng.normal(size=(4, 2))
    w = np.linspace(0.0, 1.0, 6)[:, None, None]
    paths = (1 - w) * start + w * target  # (6, 4, 2): straight lines to the targets
    estimates = np.broadcast_to(target, paths.shape)
    frames = viz.trajectory_frames(paths, [f"step {i}" for i in range(6)], estimates=estimates,
                                   reference=rng.normal(size=(300, 2)), dpi=40)
    assert len(frames) == 6 and all(p.startswith(viz.PNG_MAGIC) for p in frames)
    assert {_size(p) for p in frames} == {(144, 144)}
    assert len(set(frames)) == 6, "the points move, so every frame differs"
    zoom = [((-8 / (i + 1), 8 / (i + 1)), (-8 / (i + 1), 8 / (i + 1))) for i in range(6)]
    zoomed = viz.trajectory_frames(paths, estimates=estimates, lims=zoom, dpi=40)
    assert len(zoomed) == 6 and zoomed[0] != frames[0]
    still = viz.trajectory_frames(np.zeros((3, 2, 2)), lims=((-1, 1), (-1, 1)), titles=["a"] * 3, dpi=40)
    assert len(set(still)) == 1, "nothing moves: identical frames"


def test_trajectory_frames_rejects_bad_shapes() -> None:
    paths = np.zeros((5, 3, 2))
    with pytest.raises(ValueError, match="n_frames, k, 2"):
        viz.trajectory_frames(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="estimates"):
        viz.trajectory_frames(paths, estimates=np.zeros((5, 2, 2)))
    with pytest.raises(ValueError, match="lims"):
        viz.trajectory_frames(paths, lims=[((-1, 1), (-1, 1))] * 4)
    with pytest.raises(ValueError, match="titles"):
        viz.trajectory_frames(paths, titles=["a"])


# --- the book's figure style --------------------------------------------------------------

def test_book_style_is_applied_on_import_and_text_is_at_least_10px() -> None:
    assert matplotlib.rcParams["figure.dpi"] == viz.FIGURE_DPI
    assert matplotlib.rcParams["image.cmap"] == "viridis"
    smallest_pt = min(matplotlib.rcParams[k] for k in
                      ("xtick.labelsize", "ytick.labelsize", "legend.fontsize", "font.size"))
    # A figure shown at its natural size: 1 pt = FIGURE_DPI / 72 px; frames use DPI.
    assert smallest_pt * min(viz.FIGURE_DPI, viz.DPI) / 72 >= 10
    assert viz.COLUMN_IN * viz.FIGURE_DPI == pytest.approx(viz.COLUMN_PX)


def _panel_rows(fig: object) -> int:
    return len({round(ax.get_position().y0, 3) for ax in fig.axes})


def test_fit_to_column_stacks_a_wide_row_of_panels() -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(12, 2.7), sharex=True, sharey=True)
    for ax in axes:
        ax.plot([0, 1], [0, 1])
        ax.set(title=r"$\sigma_\mathrm{max} = 1$", aspect="equal")
    viz.fit_to_column(fig)
    w, h = fig.get_size_inches()
    assert w == pytest.approx(viz.COLUMN_IN)
    per_row = int(viz.COLUMN_IN // viz.MIN_PANEL_IN)
    assert _panel_rows(fig) == -(-5 // per_row)  # ceil
    # every panel at least MIN_PANEL_IN wide (as a slot of the new grid)
    cols = -(-5 // _panel_rows(fig))
    assert viz.COLUMN_IN / cols >= viz.MIN_PANEL_IN
    png = viz.fig_to_png(fig, dpi=viz.FIGURE_DPI, quantize=False)
    assert _size(png)[0] <= viz.COLUMN_PX + 1


def test_fit_to_column_narrows_a_row_that_fits_without_stacking() -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.3))
    viz.fit_to_column(fig)
    assert fig.get_size_inches()[0] == pytest.approx(viz.COLUMN_IN)
    assert _panel_rows(fig) == 1
    assert fig.get_size_inches()[1] < 3.3  # the panels keep (about) their aspect
    plt.close(fig)


def test_fit_to_column_leaves_a_narrow_figure_alone() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    viz.fit_to_column(fig)
    assert tuple(fig.get_size_inches()) == (5, 3)
    plt.close(fig)


def test_panel_frames_are_stacked_to_fit_the_column() -> None:
    panels = [_clouds(n_frames=2, n_points=50, seed=s) for s in range(4)]
    frames = viz.point_cloud_panel_frames(panels, ["a", "b", "c", "d"], ["t0", "t1"],
                                          panel_size=2.6)
    width, height = _size(frames[0])
    assert width <= viz.COLUMN_PX
    assert height > width  # two rows of two


def test_vector_field_frames_have_a_colorbar() -> None:
    frames = viz.vector_field_frames([lambda p: -p, lambda p: -2 * p], ((-1, 1), (-1, 1)),
                                     grid=5)
    one_panel = viz.vector_field_frames([lambda p: -p], ((-1, 1), (-1, 1)), grid=5,
                                        normalize=False)
    assert _size(frames[0])[0] > _size(one_panel[0])[0]  # room for the colorbar
