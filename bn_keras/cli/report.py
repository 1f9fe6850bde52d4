"""What the commands show and write: progress, leaderboards, plots, paths.

`bn-keras compare` ends with `leaderboard.csv`, a PNG of the validation
curves (`bn_keras.cli.plot`) and the printed leaderboard
(`comparison_summary`); `bn-keras search` with
`bn_keras.tuner.placement_report`, the same CSV and PNG of its trials, the
best model and the paths (`search_summary`). Interrupted, both write what
finished. The progress bars go to standard error, the rest to standard
output. The figures come from `bn_keras.cli.experiment`.
"""

import csv
import math
import os

import keras

from bn_keras.callbacks._alerts import UNHEALTHY
from bn_keras.callbacks._hparams import words
from bn_keras.callbacks._layout import best_tag
from bn_keras.callbacks._layout import last_value
from bn_keras.callbacks._layout import retitle_chart
from bn_keras.cli import plot
from bn_keras.cli.common import console
from bn_keras.cli.common import table
from bn_keras.cli.experiment import Result

LEADERBOARD = "leaderboard.csv"
PLOT = "validation_curves.png"
BEST_MODEL = "best_model.keras"

#: The leaderboard's columns after the rank and what was trained.
RESULT_COLUMNS = (
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
    plan = f"{count} configuration{'s' if count > 1 else ''}"
    if comparison.requested > count:
        plan += (
            f" ({comparison.requested} asked for: some build the same "
            "network)"
        )
    out.print(comparison.dataset.describe())
    out.print(
        f"model {settings.model} ({comparison.base.count_params():,} "
        f"parameters without BN), {plan} x {settings.epochs} "
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
            "figures suffer for it. More epochs or --momentum 0.9 avoid that.",
            soft_wrap=False,
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


def _result_cells(result):
    """The `RESULT_COLUMNS` of a result."""
    return [
        f"{result.best:.6g}",
        result.best_epoch or "",
        result.epochs_to_fraction or "",
        f"{result.curve[-1]:.6g}" if result.curve else "",
        f"{result.seconds_per_epoch:.4f}",
        len(result.curve),
        os.path.basename(result.run_dir),
    ]


def write_csv(path, header, rows):
    """A CSV file: the `header`, then the `rows`."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def _configuration_cells(result):
    configuration = result.configuration
    return [
        result.label,
        configuration.placements if configuration.has_batchnorm else "none",
        configuration.normalization or "none",
    ]


def write_comparison_csv(path, results, metric):
    """The leaderboard of a comparison, best first."""
    header = [
        "rank",
        "configuration",
        "placement",
        "normalization",
        *(name.format(metric=metric) for name in RESULT_COLUMNS),
    ]
    rows = [
        [rank, *_configuration_cells(result), *_result_cells(result)]
        for rank, result in leaderboard_rows(results)
    ]
    write_csv(path, header, rows)


def print_leaderboard(out, results, metric):
    """The leaderboard as a table, best first; the figures' headers on two
    lines, so that a configuration's name fits on one line (`"input renorm
    + layer-bn-act = bn-act-layer + batch"` in 100 columns)."""
    name = "val acc" if metric == "val_accuracy" else "val loss"
    columns = [
        ("#", "right"),
        ("configuration", "left"),
        (f"best\n{name}", "right"),
        ("best\nepoch", "right"),
        ("epochs\nto 95%", "right"),
        (f"final\n{name}", "right"),
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


def write_results(session, results, metric, title, write_table):
    """Writes the leaderboard (with `write_table(path, results, metric)`)
    and the plot into `session`; returns their paths."""
    csv_path = os.path.join(session, LEADERBOARD)
    png_path = os.path.join(session, PLOT)
    write_table(csv_path, results, metric)
    ranked = [result for _, result in leaderboard_rows(results)]
    plot.write_plot(png_path, ranked, metric, title)
    return csv_path, png_path


def name_the_leader(session, results, metric):
    """Names the leaderboard's #1 (a search's trial by its run), its
    figure and its BN's health at the end, in the title of the Overview's
    chart of the ranking figure, in every run of `session` (the folder of
    the runs): the first screen of Custom Scalars then says which
    configuration won, as the leaderboard does."""
    (_, first), *_ = leaderboard_rows(results)
    # A trial by its run's name, as TensorBoard lists it.
    label = first.label
    if first.trial_id is not None:
        label = os.path.basename(first.run_dir)
    unhealthy = last_value(first.run_dir, UNHEALTHY)
    if unhealthy is None:
        health = ""
    elif unhealthy == 0:
        health = "; its BN ends healthy"
    else:
        count = round(unhealthy)
        health = (
            f"; its BN ends with {count} layer{'s' if count > 1 else ''} "
            "in error or warning (the Text dashboard says which)"
        )
    title = (
        f"best {words(metric)} so far; #1 in the leaderboard: "
        f"{label}, {_fmt(first.best)} at epoch {first.best_epoch}"
        f"{health}"
    )
    runs = [os.path.join(session, name) for name in sorted(os.listdir(session))]
    runs = [run for run in runs if os.path.isdir(run)]
    retitle_chart(runs, best_tag(metric), title)


def partial_results(results, total, session, kind="configurations"):
    """What an interrupted command finished, for its last line; `total`
    is `None` when unknown in advance (hyperband)."""
    of = f" of {total}" if total else ""
    if not results:
        return f"before any{of} {kind} finished"
    return (
        f"after {len(results)}{of} {kind}; their leaderboard and plot are "
        f"in {session}"
    )


def comparison_summary(out, session, comparison):
    """Writes the CSV and the plot of the finished configurations into
    `session`, prints the leaderboard and where everything is."""
    results = comparison.results
    total = len(comparison.configurations)
    out.print()
    if not results:
        out.print(f"no configuration finished; TensorBoard logs: {session}")
        return
    title = f"{comparison.dataset.name}, {comparison.settings.model}"
    if len(results) < total:
        title += f" ({len(results)} of {total} configurations)"
    metric = comparison.metric
    csv_path, png_path = write_results(
        session, results, metric, title, write_comparison_csv
    )
    print_leaderboard(out, results, metric)
    name_the_leader(session, results, metric)
    for note in comparison.same_network_notes():
        out.print(f"note: {note}: trained once, one row.", soft_wrap=False)
    out.print(f"leaderboard:  {csv_path}")
    out.print(f"plot:         {png_path}")
    out.print(f"TensorBoard:  {session} (one run per configuration)")
    tensorboard_hint(out, session)


# -- bn-keras search ----------------------------------------------------------


def print_search_setup(out, dataset, settings, notes=()):
    """The data, the hypermodel and the budget; `notes` (the placements
    searched as one, `Search.notes`) after them."""
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
    for note in notes:
        out.print(f"note: {note}.", soft_wrap=False)


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


def _trials_csv(tuner):
    """`write_table` for `write_results`: the trials' leaderboard, with
    each trial's hyperparameters."""

    def write(path, results, metric):
        header = [
            "rank",
            "trial",
            *(name.format(metric=metric) for name in RESULT_COLUMNS),
            "hyperparameters",
        ]
        rows = []
        for rank, result in leaderboard_rows(results):
            trial_id = result.trial_id
            values = tuner.oracle.trials[trial_id].hyperparameters.values
            rows.append(
                [
                    rank,
                    trial_id,
                    *_result_cells(result),
                    "; ".join(f"{k}={v}" for k, v in values.items()),
                ]
            )
        write_csv(path, header, rows)

    return write


def _print_best(out, search, rows, session):
    """Saves the best model; prints its trial and score, in the target's
    units."""
    best_path = os.path.join(session, BEST_MODEL)
    search.best_model().save(best_path)
    score = rows[0]["score"]
    if score is not None and search.metric == "val_loss":
        score *= search.dataset.loss_scale
    shown = "-" if score is None or math.isnan(score) else _fmt(score)
    out.print(f"best trial {rows[0]['trial_id']}: {search.metric} {shown}")
    out.print(f"best model:   {best_path}")


def search_summary(out, search, session):
    """Prints the placement report, writes the leaderboard and plot of the
    completed trials and the best model into `session`, and prints where
    everything is.

    Returns:
        The report's rows (`bn_keras.tuner.placement_report`), best first;
        empty when no trial completed.
    """
    from bn_keras.tuner import placement_report

    out.print()
    rows = placement_report(search.tuner, console=out) if search.tuner else []
    dataset = search.dataset
    if rows and dataset.task == "regression":
        out.print(
            f"(the report's scores are on the standardized target; times "
            f"{dataset.loss_scale:.4g} in the target's units, as in "
            f"{LEADERBOARD})"
        )
    results = search.results()
    if results:
        title = f"{dataset.name}, {search.settings.hypermodel} search"
        csv_path, png_path = write_results(
            session, results, search.metric, title, _trials_csv(search.tuner)
        )
        out.print(f"leaderboard:  {csv_path}")
        out.print(f"plot:         {png_path}")
        if search.logdir:
            name_the_leader(search.logdir, results, search.metric)
    if rows:
        _print_best(out, search, rows, session)
    else:
        out.print("no trial completed")
    out.print(f"tuner:        {os.path.join(session, 'tuner')}")
    if search.logdir:
        out.print(f"TensorBoard:  {search.logdir} (one run per trial)")
        tensorboard_hint(out, search.logdir)
    return rows
