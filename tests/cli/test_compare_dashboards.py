"""A real TensorBoard server shows a `bn-keras compare` run as a person
should read it: one run per configuration, named by it; HParams ranked by
the leaderboard's figure; Custom Scalars opening on the Overview alone; a
layer's tag the same in every configuration; no Infinity.

Read over TensorBoard's HTTP data API, as its web page reads it.
"""

import contextlib
import html
import io
import json
import math
import re
import urllib.parse
import urllib.request

import pytest

from bn_keras.cli import main
from tests.callbacks.test_tensorboard_server import get_json
from tests.callbacks.test_tensorboard_server import scalar_values
from tests.callbacks.test_tensorboard_server import start_tensorboard
from tests.callbacks.test_tensorboard_server import stop
from tests.callbacks.test_tensorboard_server import wait_for_tag
from tests.cli.helpers import read_csv
from tests.cli.helpers import session_dirs

#: `bn-keras compare`'s default configurations on digits: on its MLP, a
#: chain, pre-activation builds layer-bn-act's network, trained once.
CONFIGURATIONS = [
    "layer-act-bn_batch",
    "layer-bn-act=bn-act-layer_batch",
    "no-bn",
]


def post_json(url, body):
    """A POST with a JSON body, as TensorBoard 2.21's HParams page sends."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read().decode())


@pytest.fixture(scope="module")
def served_comparison(tmp_path_factory):
    """A quick comparison on digits with the default placements (the MLP,
    whose first BN sees constant pixels), served by TensorBoard."""
    logdir = tmp_path_factory.mktemp("dashboards")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(
            [
                "compare",
                "--quick",
                "--epochs",
                "2",
                "--logdir",
                str(logdir),
            ]
        )
    assert status == 0, err.getvalue()
    (session,) = session_dirs(logdir, "compare-digits")
    session = logdir / session
    leaderboard = {
        row["run_dir"]: row for row in read_csv(session / "leaderboard.csv")
    }
    server, base = start_tensorboard(session)
    try:
        # Every run loaded: TensorBoard reads the runs in name order.
        tags = wait_for_tag(
            server, base, session, "no-bn", "epoch/best_val_accuracy"
        )
        yield base, tags, leaderboard
    finally:
        stop(server)


@pytest.mark.slow
def test_one_run_per_configuration_named_by_it(served_comparison):
    base, tags, _ = served_comparison
    # One run per configuration, which holds its HParams session, the
    # monitor's figures and Keras's epoch metrics: one colour is one
    # configuration on every page. No run of the experiment's own.
    assert sorted(get_json(f"{base}/data/runs")) == CONFIGURATIONS
    assert sorted(tags) == CONFIGURATIONS
    for run in CONFIGURATIONS:
        assert {"epoch/val_accuracy", "epoch/val_loss"} <= set(tags[run])


def post_session_groups(base):
    return post_json(
        f"{base}/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": [
                "STATUS_UNKNOWN",
                "STATUS_SUCCESS",
                "STATUS_FAILURE",
                "STATUS_RUNNING",
            ],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        },
    )["sessionGroups"]


@pytest.mark.slow
def test_hparams_rank_by_the_leaderboard_figure(served_comparison):
    """The objective first: its best value, the leaderboard's figure,
    then its final value, beside the configuration's hyperparameters."""
    base, _, leaderboard = served_comparison
    experiment = post_json(
        f"{base}/data/plugin/hparams/experiment", {"experimentName": ""}
    )
    metrics = [
        (m["name"].get("group", ""), m["name"]["tag"])
        for m in experiment["metricInfos"]
    ]
    # The five TensorBoard shows: which run won, and is its BN healthy.
    assert metrics[:5] == [
        ("", "epoch/best_val_accuracy"),
        ("", "epoch/val_accuracy"),
        ("", "alerts/unhealthy_layers"),
        ("", "batchnorm/max_probe_gap"),
        ("", "batchnorm/max_drift_in_std"),
    ]
    assert [m["displayName"] for m in experiment["metricInfos"][:2]] == [
        "best validation accuracy",
        "final validation accuracy",
    ]
    # No per-layer figure among the metrics.
    assert not [tag for _, tag in metrics if tag.startswith("bn")]
    assert ("", "batchnorm/max_probe_gap") in metrics
    # The first five of each are what the page shows: placement and
    # normalization lead the hyperparameters.
    names = [h["displayName"] for h in experiment["hparamInfos"]]
    assert names == ["placement", "normalization", "momentum"]

    groups = post_session_groups(base)
    assert sorted(g["name"] for g in groups) == CONFIGURATIONS
    # One session for the two placements that build one network, named
    # by both, as its leaderboard row.
    column = hparam_name(experiment, "placement")
    assert {g["name"]: g["hparams"][column] for g in groups} == {
        "layer-act-bn_batch": "layer-act-bn",
        "layer-bn-act=bn-act-layer_batch": "layer-bn-act = bn-act-layer",
        "no-bn": "none",
    }
    for group in groups:
        row = leaderboard[group["name"]]
        placement = group["hparams"][hparam_name(experiment, "placement")]
        assert placement == row["placement"]
        values = {v["name"]["tag"]: v["value"] for v in group["metricValues"]}
        # The leaderboard's figures, to its 6 significant digits.
        assert values["epoch/best_val_accuracy"] == pytest.approx(
            float(row["best_val_accuracy"]), rel=5e-6
        )
        assert values["epoch/val_accuracy"] == pytest.approx(
            float(row["final_val_accuracy"]), rel=5e-6
        )
        # Epochs counted from 1 on the charts as in the leaderboard.
        curve = scalar_values(base, group["name"], "epoch/val_accuracy")
        steps = {step: value for _, step, value in curve}
        assert sorted(steps) == [1, 2]
        best_step = min(s for s in steps if steps[s] == max(steps.values()))
        assert best_step == int(row["best_epoch"])


def hparam_name(experiment, display_name):
    """A hyperparameter's name in TensorBoard (its display name shows)."""
    (info,) = [
        h for h in experiment["hparamInfos"] if h["displayName"] == display_name
    ]
    return info["name"]


@pytest.mark.slow
def test_custom_scalars_open_on_the_overview_alone(served_comparison):
    base, _, _ = served_comparison
    layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
    titles = [category["title"] for category in layout["category"]]
    assert titles == ["Overview", "bn01-dense"]
    assert [c.get("closed", False) for c in layout["category"]] == [
        False,
        True,
    ]
    overview = [c["multiline"]["tag"] for c in layout["category"][0]["chart"]]
    assert overview[:2] == [
        ["^alerts/unhealthy_layers$"],
        ["^epoch/best_val_accuracy$"],
    ]


@pytest.mark.slow
def test_the_overview_names_the_leaderboards_first(served_comparison):
    """The first screen says which configuration won: the title of the
    Overview's chart of the ranking figure names the leaderboard's #1,
    its figure and best epoch, and its BN's health at the end, in one
    chart across runs (every run's layout says the same)."""
    base, _, leaderboard = served_comparison
    (first,) = [row for row in leaderboard.values() if row["rank"] == "1"]
    layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
    (overview,) = [c for c in layout["category"] if c["title"] == "Overview"]
    titles = [
        chart["title"]
        for chart in overview["chart"]
        if chart["multiline"]["tag"] == ["^epoch/best_val_accuracy$"]
    ]
    best = float(first["best_val_accuracy"])
    (*_, (_, _, unhealthy)) = scalar_values(
        base, first["run_dir"], "alerts/unhealthy_layers"
    )
    health = "its BN ends healthy"
    if unhealthy:
        count = round(unhealthy)
        health = (
            f"its BN ends with {count} layer{'s' if count > 1 else ''} in "
            "error or warning (the Text dashboard says which)"
        )
    assert titles == [
        "best validation accuracy so far; #1 in the leaderboard: "
        f"{first['configuration']}, {best:.4f} at epoch "
        f"{first['best_epoch']}; {health}"
    ]


@pytest.mark.slow
def test_a_layer_has_one_tag_in_every_configuration(served_comparison):
    """The BN that normalizes the first Dense layer's output is `bn01-dense`
    whatever the placement (after it, before or after its activation; the
    pre-activation BN before the next Dense, with the activation moved
    after it, is the same network as layer-bn-act's, one run for both: no
    placement puts a BN on this model's input)."""
    base, tags, _ = served_comparison
    layers = {
        run: sorted({t.split("/")[0] for t in run_tags if t.startswith("bn0")})
        for run, run_tags in tags.items()
    }
    assert layers == {
        "layer-act-bn_batch": ["bn01-dense"],
        "layer-bn-act=bn-act-layer_batch": ["bn01-dense"],
        "no-bn": [],
    }
    # Where each sits, as the text summary reads it from the built graph.
    expected = {
        "layer-act-bn_batch": "Dense(relu) -> BN ->",
        "layer-bn-act=bn-act-layer_batch": "Dense -> BN -> relu",
    }
    for run, where in expected.items():
        query = urllib.parse.urlencode({"run": run, "tag": "batchnorm/layers"})
        page = get_json(f"{base}/data/plugin/text/text?{query}")[-1]["text"]
        # The page is the Markdown rendered to HTML: a table row a <tr>.
        rows = [
            html.unescape(re.sub(r"<[^>]+>", "|", row))
            for row in page.split("<tr>")
            if "bn01-dense" in row and "plain, 0.99" in row
        ]
        (row,) = rows
        assert where in row, (run, row)


@pytest.mark.slow
def test_every_scalar_of_every_run_is_finite(served_comparison):
    base, tags, _ = served_comparison
    checked = 0
    for run, run_tags in tags.items():
        for tag in run_tags:
            values = scalar_values(base, run, tag)
            # At the epochs' numbers, from 1 (an alert from the epoch it
            # first fired).
            assert {step for _, step, _ in values} <= {1, 2}, (run, tag)
            assert all(math.isfinite(v) for _, _, v in values), (run, tag)
            checked += 1
    # Keras's 4 metrics and the best value in 3 runs, the monitor's
    # figures in 2.
    assert checked > 3 * 5 + 2 * 20
