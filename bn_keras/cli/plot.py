"""The PNG that `compare` and `search` write: validation curves per epoch.

Two panels side by side: the metric the results are ranked by (validation
accuracy, or validation loss for regression) and a loss (the validation
loss, or for regression the training loss), each loss on a log scale when
its values span more than a factor of 50. Epochs are whole numbers counted
from 1, as in the leaderboard and TensorBoard, an open circle marks each
curve's best epoch, and the legend sits outside the axes, ranked as the
leaderboard, with each curve's best value and epoch.
"""

import math

#: `(width, height)` in inches, at `DPI` dots per inch.
FIGURE_SIZE = (12, 5)
DPI = 100

#: A loss panel is drawn on a log scale beyond this max / min ratio.
LOG_SCALE_RATIO = 50

#: Colours of the curves (matplotlib's "tab10"); past ten curves, the
#: colours come round again with another line style.
_STYLES = ("-", "-.", ":")


def panels(metric):
    """The two metrics plotted for a ranking `metric`."""
    if metric == "val_accuracy":
        return ("val_accuracy", "val_loss")
    return ("val_loss", "loss")


def _axis_label(metric):
    return {
        "val_accuracy": "validation accuracy",
        "val_loss": "validation loss",
        "loss": "training loss",
    }.get(metric, metric.replace("_", " "))


def _style(index, result):
    """Line colour and style: black dashes for 'no BN'."""
    from matplotlib import colormaps

    if result.is_baseline:
        return {"color": "black", "linestyle": "--"}
    colours = colormaps["tab10"].colors
    return {
        "color": colours[index % len(colours)],
        "linestyle": _STYLES[index // len(colours) % len(_STYLES)],
    }


def _epochs(result, values):
    return list(range(result.first_epoch, result.first_epoch + len(values)))


def _label(rank, result):
    """`"1. layer-bn-act + batch (0.9978 at epoch 8)"`: the rank, and the
    figure the result is ranked by, as the leaderboard has it."""
    if result.best_epoch is None:
        return f"{rank}. {result.label}"
    return (
        f"{rank}. {result.label} ({result.best:.4g} at epoch "
        f"{result.best_epoch})"
    )


def _plot_panel(axes, results, metric):
    """One panel: a curve per result, labelled with its rank and best
    value, its best epoch (by the ranking metric) circled."""
    for index, result in enumerate(results):
        values = result.history.get(metric, [])
        if not values:
            continue
        style = _style(index, result)
        axes.plot(
            _epochs(result, values),
            values,
            marker=".",
            label=_label(index + 1, result),
            **style,
        )
        best = result.best_epoch
        if best is not None and best - result.first_epoch < len(values):
            y = values[best - result.first_epoch]
            axes.plot(
                best,
                y,
                "o",
                color=style["color"],
                markersize=8,
                markerfacecolor="none",
            )
    axes.set_ylabel(_axis_label(metric))


def _log_scale_if_wide(axes, results, metric):
    """A log scale for a loss whose values span more than a factor of 50."""
    values = [
        v
        for r in results
        for v in r.history.get(metric, [])
        if math.isfinite(v) and v > 0
    ]
    if values and max(values) / min(values) > LOG_SCALE_RATIO:
        axes.set_yscale("log")


def _integer_epochs(axes, results):
    """Whole epochs on the x axis, with half an epoch of margin."""
    from matplotlib.ticker import MaxNLocator

    last = max(r.first_epoch + len(r.curve) - 1 for r in results)
    first = min(r.first_epoch for r in results)
    axes.set_xlim(first - 0.5, last + 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.set_xlabel("epoch")


def _legend(figure, axes, metric):
    """The curves' legend, and the best-epoch marker's, right of the
    panels."""
    from matplotlib.lines import Line2D

    handles, labels = axes.get_legend_handles_labels()
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            linestyle="none",
            color="gray",
            markerfacecolor="none",
            markersize=8,
        )
    )
    labels.append(f"best epoch\n(best {_axis_label(metric)})")
    figure.legend(
        handles,
        labels,
        loc="outside right upper",
        fontsize="small",
        title="best first",
    )


def figure(results, metric, title):
    """The matplotlib `Figure` of `results` (ranked best first).

    Args:
        results: `bn_keras.cli.experiment.Result`s, best first.
        metric: The metric they are ranked by.
        title: The start of the figure's title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(result)
    axes = result.subplots(1, 2)
    for panel, name in zip(axes, panels(metric)):
        _plot_panel(panel, results, name)
        if name.endswith("loss"):
            _log_scale_if_wide(panel, results, name)
        _integer_epochs(panel, results)
        panel.grid(True, alpha=0.3)
    _legend(result, axes[0], metric)
    # From the left edge: centred on the figure, a long title would run
    # under the legend that a long configuration name widens.
    result.suptitle(
        f"{title}: ranked by best {_axis_label(metric)}", x=0.01, ha="left"
    )
    return result


def write_plot(path, results, metric, title):
    """Writes `figure(results, metric, title)` to `path` as a PNG."""
    figure(results, metric, title).savefig(path)
