"""The PNG of `compare` and `search`: what a user reads off it."""

import pytest
from matplotlib.text import Text

from bn_keras.cli import plot
from bn_keras.cli.experiment import Configuration
from bn_keras.cli.experiment import Result


def _result(label, history, metric="val_accuracy", placement="layer-bn-act"):
    return Result(
        label,
        f"runs/{label}",
        history,
        [0.1] * len(history[metric]),
        metric,
        Configuration(placement, "batch"),
    )


def _renderer(figure):
    figure.canvas.draw()
    return figure.canvas.get_renderer()


def test_two_panels_legend_outside_with_the_marker():
    results = [
        _result(
            "a", {"val_accuracy": [0.5, 0.9, 0.8], "val_loss": [1.0, 0.3, 0.4]}
        ),
        _result(
            "no BN",
            {"val_accuracy": [0.4, 0.6, 0.7], "val_loss": [1.2, 0.9, 0.8]},
            placement="layer-act",
        ),
    ]
    figure = plot.figure(results, "val_accuracy", "digits, mlp")
    left, right = figure.axes
    assert left.get_ylabel() == "validation accuracy"
    assert right.get_ylabel() == "validation loss"
    assert right.get_yscale() == "linear"  # 0.3 to 1.2: no log scale
    (legend,) = figure.legends
    labels = [text.get_text() for text in legend.get_texts()]
    # Ranked, with the leaderboard's figure: the best value and its epoch.
    assert labels == [
        "1. a (0.9 at epoch 2)",
        "2. no BN (0.7 at epoch 3)",
        "best epoch\n(best validation accuracy)",
    ]
    renderer = _renderer(figure)
    box = legend.get_window_extent(renderer)
    for axes in figure.axes:  # outside both panels
        assert not box.overlaps(axes.get_window_extent(renderer))
    # The best epoch circled: epoch 2 for "a" on both panels.
    circles = [line for line in left.get_lines() if line.get_marker() == "o"]
    assert [tuple(c.get_xydata()[0]) for c in circles] == [
        (2.0, 0.9),
        (3.0, 0.7),
    ]
    # "no BN" is the dashed black baseline.
    baseline = [
        line
        for line in left.get_lines()
        if line.get_label() == "2. no BN (0.7 at epoch 3)"
    ]
    assert baseline[0].get_linestyle() == "--"
    assert figure.get_suptitle() == (
        "digits, mlp: ranked by best validation accuracy"
    )


def test_one_epoch_has_a_whole_epoch_tick():
    results = [_result("a", {"val_accuracy": [0.5], "val_loss": [1.0]})]
    figure = plot.figure(results, "val_accuracy", "t")
    _renderer(figure)
    for axes in figure.axes:
        low, high = axes.get_xlim()
        ticks = [t for t in axes.get_xticks() if low <= t <= high]
        assert ticks == [1.0]


def test_regression_panels_and_log_scale():
    results = [
        _result(
            "a",
            {"val_loss": [1e6, 1e3, 5e2], "loss": [2e6, 2e3, 9e2]},
            metric="val_loss",
        ),
    ]
    figure = plot.figure(results, "val_loss", "prices")
    left, right = figure.axes
    assert (left.get_ylabel(), right.get_ylabel()) == (
        "validation loss",
        "training loss",
    )
    assert left.get_yscale() == right.get_yscale() == "log"
    assert figure.legends[0].get_texts()[-1].get_text() == (
        "best epoch\n(best validation loss)"
    )


def test_a_trial_that_starts_later():
    """Hyperband continues trials: their epochs start past 1."""
    result = Result(
        "trial 3",
        "logs/3",
        {"val_accuracy": [0.7, 0.8], "val_loss": [0.5, 0.4]},
        [0.1, 0.1],
        "val_accuracy",
        first_epoch=3,
    )
    assert result.best_epoch == 4 and not result.is_baseline
    figure = plot.figure([result], "val_accuracy", "t")
    (curve,) = [
        line for line in figure.axes[0].get_lines() if line.get_marker() == "."
    ]
    assert list(curve.get_xdata()) == [3, 4]


@pytest.mark.parametrize("count", [11, 13])
def test_many_curves_stay_distinct(count):
    results = [
        _result(f"c{i}", {"val_accuracy": [0.1 * i], "val_loss": [1.0]})
        for i in range(count)
    ]
    figure = plot.figure(results, "val_accuracy", "t")
    styles = {
        (line.get_color(), line.get_linestyle())
        for line in figure.axes[0].get_lines()
        if line.get_marker() == "."
    }
    assert len(styles) == count


def test_the_title_clears_a_wide_legend():
    """A long configuration name widens the legend: the title, over the
    panels, stays clear of it."""
    label = "input renorm + layer-bn-act = bn-act-layer + ghost(8)"
    results = [
        _result(
            f"{label} {i}",
            {"val_accuracy": [0.5, 0.6 + i / 100], "val_loss": [1.0, 0.9]},
        )
        for i in range(8)
    ]
    figure = plot.figure(results, "val_accuracy", "fashion_mnist, cnn")
    renderer = _renderer(figure)
    (legend,) = figure.legends
    (title,) = [
        text.get_window_extent(renderer)
        for text in figure.findobj(Text)
        if text.get_text() == figure.get_suptitle()
    ]
    assert not title.overlaps(legend.get_window_extent(renderer))
    assert title.x0 >= 0
