"""What the commands show and write: progress, leaderboards, plots, paths.

`bn-keras compare` ends with `leaderboard.csv`, a PNG of the validation
curves and the printed leaderboard (`comparison_summary`); `bn-keras
search` with `bn_keras.tuner.placement_report`, the best model and the
paths (`search_summary`). The progress bars go to standard error, the rest
to standard output. The figures come from `bn_keras.cli.experiment`.
"""

import csv
import math
import os
import warnings

import keras
import numpy as np

from bn_keras.cli.common import console
from bn_keras.cli.common import table
from bn_keras.cli.experiment import Result

LEADERBOARD = "leaderboard.csv"
PLOT = "validation_curves.png"
BEST_MODEL = "best_model.keras"

CSV_COLUMNS = (
    "rank",
    "configuration",
    "placement",
    "normalization",
    "best_{metric}",
    "best_epoch",
    "epochs_to_95pct_of_best",
    "final_{metric}",
    "seconds_per_epoch",
    "epochs",
    "run_dir",
)


def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000 or (value != 0 and abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def _progress(*columns):
    """A rich progress display on standard error."""
    from rich.progress import BarColumn
    from rich.progress import Progress
    from rich.progress import TextColumn
    from rich.progress import TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *columns,
        TimeElapsedColumn(),
        console=console(stderr=True),
    )


def tensorboard_hint(out, logdir):
    """The closing lines: the command that opens the runs."""
    out.print()
    out.print(f"  tensorboard --logdir {logdir}")


# -- bn-keras compare ---------------------------------------------------------


def print_comparison_setup(out, comparison):
    """The data, the model and the plan; a note when BN's moving
    statistics cannot keep up with so short a run."""
    settings = comparison.settings
    count = len(comparison.configurations)
    out.print(comparison.dataset.describe())
    out.print(
        f"model {settings.model} ({comparison.base.count_params():,} "
        f"parameters without BN), {count} "
        f"configuration{'s' if count > 1 else ''} x {settings.epochs} "
        f"epochs, batch {settings.batch_size}, Adam "
        f"{settings.learning_rate:g}, BN momentum {settings.momentum:g}, "
        f"seed {settings.seed}"
    )
    horizon = 1.0 / (1.0 - settings.momentum)
    steps = comparison.total_steps
    if count > 1 and steps < 3 * horizon:
        out.print(
            f"note: {steps} training steps in all, and BN's moving statistics "
            f"(momentum {settings.momentum:g}) average over about "
            f"{horizon:.0f} steps: they will lag behind, and BN's validation "
            "figures suffer for it. More epochs or --momentum 0.9 avoid that."
        )


class ComparisonProgress:
    """A progress bar over the configurations, moved epoch by epoch.

    A context manager; pass it to `Comparison.run`.
    """

    def __init__(self, comparison):
        from rich.progress import MofNCompleteColumn
        from rich.progress import TextColumn

        self.epochs = comparison.settings.epochs
        self._progress = _progress(
            MofNCompleteColumn(), TextColumn("configurations")
        )
        self._total = len(comparison.configurations)

    def __enter__(self):
        self._progress.__enter__()
        self._bar = self._progress.add_task("", total=self._total)
        return self

    def __exit__(self, *exc_info):
        if exc_info[0] is None:
            self._progress.update(self._bar, description="done")
        return self._progress.__exit__(*exc_info)

    def epoch(self, index, label, epoch):
        self._progress.update(
            self._bar,
            description=f"{label}: epoch {epoch + 1}/{self.epochs}",
            completed=index + epoch / self.epochs,
        )

    def finished(self, count):
        self._progress.update(self._bar, completed=count)


def leaderboard_rows(results):
    """Results in leaderboard order with their rank."""
    return list(enumerate(sorted(results, key=Result.sort_key), start=1))


def _csv_row(rank, result):
    configuration = result.configuration
    return [
        rank,
        result.label,
        configuration.placement if configuration.has_batchnorm else "none",
        configuration.normalization or "none",
        f"{result.best:.6g}",
        result.best_epoch or "",
        result.epochs_to_fraction or "",
        f"{result.curve[-1]:.6g}" if result.curve else "",
        f"{result.seconds_per_epoch:.4f}",
        len(result.curve),
        os.path.basename(result.run_dir),
    ]


def write_csv(path, results, metric):
    """The leaderboard as CSV, best first."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([name.format(metric=metric) for name in CSV_COLUMNS])
        for rank, result in leaderboard_rows(results):
            writer.writerow(_csv_row(rank, result))


def _plot_curve(axes, result):
    """One configuration's line, with a circle on its best epoch."""
    epochs = np.arange(1, len(result.curve) + 1)
    style = {"marker": ".", "label": result.label}
    if result.configuration.is_baseline:
        style.update(linestyle="--", color="black")
    (line,) = axes.plot(epochs, result.curve, **style)
    if result.best_epoch:
        axes.plot(
            result.best_epoch,
            result.best,
            "o",
            color=line.get_color(),
            markersize=7,
            markerfacecolor="none",
        )


def _log_scale_if_wide(axes, results):
    """A log scale for losses that span more than a factor of 50."""
    finite = [v for r in results for v in r.curve if math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 50:
        axes.set_yscale("log")


def write_plot(path, results, metric, title):
    """Validation curves, one line per configuration, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for _, result in leaderboard_rows(results):
        _plot_curve(axes, result)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric.replace("_", " "))
    if metric == "val_loss":
        _log_scale_if_wide(axes, results)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


def print_leaderboard(out, results, metric):
    """The leaderboard as a table, best first."""
    name = "val acc" if metric == "val_accuracy" else "val loss"
    columns = [
        ("#", "right"),
        ("configuration", "left"),
        (f"best {name}", "right"),
        ("best epoch", "right"),
        ("epochs to 95%", "right"),
        (f"final {name}", "right"),
        ("s/epoch", "right"),
    ]
    rows = [
        (
            rank,
            result.label,
            _fmt(result.best),
            result.best_epoch or "-",
            result.epochs_to_fraction or "-",
            _fmt(result.curve[-1] if result.curve else math.nan),
            _fmt(result.seconds_per_epoch, 2),
        )
        for rank, result in leaderboard_rows(results)
    ]
    out.print(table(columns, rows))


def comparison_summary(out, session, comparison):
    """Writes the CSV and the plot into `session`, prints the leaderboard
    and where everything is."""
    metric = comparison.metric
    csv_path = os.path.join(session, LEADERBOARD)
    png_path = os.path.join(session, PLOT)
    write_csv(csv_path, comparison.results, metric)
    title = (
        f"{comparison.dataset.name}, {comparison.settings.model}: "
        f"{metric.replace('_', ' ')} per epoch"
    )
    write_plot(png_path, comparison.results, metric, title)
    out.print()
    print_leaderboard(out, comparison.results, metric)
    out.print(f"leaderboard:  {csv_path}")
    out.print(f"plot:         {png_path}")
    out.print(f"TensorBoard:  {session} (one run per configuration)")
    tensorboard_hint(out, session)


# -- bn-keras search ----------------------------------------------------------


def print_search_setup(out, dataset, settings):
    """The data, the hypermodel and the budget."""
    if settings.tuner == "hyperband":
        budget = f"hyperband up to {settings.epochs} epochs per trial"
    else:
        budget = (
            f"{settings.tuner} search, {settings.trials} trials x "
            f"{settings.epochs} epochs"
        )
    on = f" on {settings.model}" if settings.hypermodel == "placement" else ""
    out.print(dataset.describe())
    out.print(
        f"hypermodel {settings.hypermodel}{on}, {budget}, batch "
        f"{settings.batch_size}, seed {settings.seed}"
    )


class _TrialProgress(keras.callbacks.Callback):
    """Moves the progress bar once per trial.

    keras-tuner deep-copies the search's callbacks for every trial; the
    copy is this same object, so that the bar is shared.
    """

    def __init__(self, progress, bar, total):
        super().__init__()
        self.progress = progress
        self.bar = bar
        self.total = total
        self.trials = 0

    def __deepcopy__(self, memo):
        return self

    def on_train_begin(self, logs=None):
        self.trials += 1
        of = f"/{self.total}" if self.total else ""
        self.progress.update(self.bar, description=f"trial {self.trials}{of}")

    def on_train_end(self, logs=None):
        self.progress.update(self.bar, completed=self.trials)


class SearchProgress:
    """A progress bar over the trials (open-ended for hyperband).

    A context manager; `callback` goes to the search's callbacks.
    """

    def __init__(self, settings):
        from rich.progress import TextColumn

        self._total = None if settings.tuner == "hyperband" else settings.trials
        self._progress = _progress(TextColumn("{task.completed} trials"))

    def __enter__(self):
        self._progress.__enter__()
        bar = self._progress.add_task("searching", total=self._total)
        self.callback = _TrialProgress(self._progress, bar, self._total)
        return self

    def __exit__(self, *exc_info):
        if exc_info[0] is None:
            done = self._progress.tasks[0].completed
            self._progress.update(
                self.callback.bar, description="done", total=done
            )
        return self._progress.__exit__(*exc_info)


def _save_best_model(tuner, path):
    with warnings.catch_warnings():
        # keras-tuner's checkpoints hold the optimizer's state too.
        warnings.filterwarnings("ignore", message="Skipping variable")
        best = tuner.get_best_models(1)[0]
    best.save(path)


def search_summary(out, tuner, session, metric):
    """Prints the placement report, saves the best model into `session`
    and prints where everything is.

    Returns:
        The report's rows (`bn_keras.tuner.placement_report`), best first;
        empty when no trial completed.
    """
    from bn_keras.tuner import placement_report

    out.print()
    rows = placement_report(tuner, console=out)
    if rows:
        best_path = os.path.join(session, BEST_MODEL)
        _save_best_model(tuner, best_path)
        score = rows[0]["score"]
        shown = "-" if score is None or math.isnan(score) else f"{score:.4f}"
        out.print(f"best trial {rows[0]['trial_id']}: {metric} {shown}")
        out.print(f"best model:   {best_path}")
    else:
        out.print("no trial completed")
    logs = os.path.join(session, "logs")
    out.print(f"tuner:        {os.path.join(session, 'tuner')}")
    out.print(f"TensorBoard:  {logs} (one run per trial)")
    tensorboard_hint(out, logs)
    return rows
