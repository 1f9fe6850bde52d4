"""A real TensorBoard server shows a `bn-keras compare` run as a person
should read it: every run named by its configuration, HParams with the
objective first, Custom Scalars opening on the Overview, no Infinity.

Read over TensorBoard's HTTP data API, as its web page reads it.
"""

import contextlib
import io
import json
import math
import urllib.request

import pytest

from bn_keras.cli import main
from tests.callbacks.test_tensorboard_server import get_json
from tests.callbacks.test_tensorboard_server import scalar_values
from tests.callbacks.test_tensorboard_server import start_tensorboard
from tests.callbacks.test_tensorboard_server import stop
from tests.callbacks.test_tensorboard_server import wait_for_tag
from tests.cli.helpers import session_dirs

#: `bn-keras compare`'s default configurations on digits.
CONFIGURATIONS = [
    "bn-act-layer_batch",
    "layer-act-bn_batch",
    "layer-bn-act_batch",
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
                "compare", "--quick", "--epochs", "2",
                "--logdir", str(logdir),
            ]
        )
    assert status == 0, err.getvalue()
    (session,) = session_dirs(logdir, "compare-digits")
    session = logdir / session
    server, base = start_tensorboard(session)
    try:
        # Every run loaded: TensorBoard reads the runs in name order.
        wait_for_tag(
            server, base, session, "no-bn/validation", "epoch_accuracy"
        )
        tags = wait_for_tag(
            server,
            base,
            session,
            "layer-bn-act_batch/batchnorm",
            "batchnorm/max_probe_gap",
        )
        yield base, tags
    finally:
        stop(server)


@pytest.mark.slow
def test_every_run_is_named_by_its_configuration(served_comparison):
    base, tags = served_comparison
    runs = get_json(f"{base}/data/runs")
    # The experiment's own run (its HParams config), then one session
    # per configuration with Keras's and the monitor's runs in it.
    expected = ["."]
    for name in CONFIGURATIONS:
        expected.append(name)
        expected.extend(
            f"{name}/{run}"
            for run in ("batchnorm", "train", "validation")
            if not (name == "no-bn" and run == "batchnorm")
        )
    assert sorted(runs) == sorted(expected)
    assert sorted(tags) == sorted(
        run for run in expected if run.count("/") == 1
    )


@pytest.mark.slow
def test_hparams_show_the_objective_first(served_comparison):
    base, _ = served_comparison
    experiment = post_json(
        f"{base}/data/plugin/hparams/experiment", {"experimentName": ""}
    )
    metrics = [
        (m["name"].get("group", ""), m["name"]["tag"])
        for m in experiment["metricInfos"]
    ]
    assert metrics[:2] == [
        ("validation", "epoch_accuracy"),
        ("validation", "epoch_loss"),
    ]
    # The rest are model-wide: no per-layer figure among the metrics.
    assert all(tag.startswith("batchnorm/") for _, tag in metrics[2:])
    assert ("batchnorm", "batchnorm/max_probe_gap") in metrics
    # The first five of each are what the page ticks: placement and
    # normalization lead the hyperparameters.
    names = [h["displayName"] for h in experiment["hparamInfos"]]
    assert names[:2] == ["placement", "normalization"]
    placement = experiment["hparamInfos"][0]
    assert placement["domainDiscrete"] == [
        "bn-act-layer",
        "layer-act-bn",
        "layer-bn-act",
        "none",
    ]

    groups = post_json(
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
    assert sorted(g["name"] for g in groups) == CONFIGURATIONS
    for group in groups:
        placement = group["hparams"][placement_name(experiment)]
        expected = group["name"].split("_")[0].replace("no-bn", "none")
        assert placement == expected
        accuracy = next(
            v["value"]
            for v in group["metricValues"]
            if v["name"]["tag"] == "epoch_accuracy"
        )
        # The value of the last epoch, as Keras logged it.
        (*_, (_, step, logged)) = scalar_values(
            base, f"{group['name']}/validation", "epoch_accuracy"
        )
        assert step == 1
        assert accuracy == pytest.approx(logged)


def placement_name(experiment):
    """The placement's name in TensorBoard (its display name is shown)."""
    (info,) = [
        h for h in experiment["hparamInfos"] if h["displayName"] == "placement"
    ]
    return info["name"]


@pytest.mark.slow
def test_custom_scalars_open_on_the_overview(served_comparison):
    base, _ = served_comparison
    layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
    titles = [category["title"] for category in layout["category"]]
    assert titles[0] == "Overview"
    assert len(titles) == len(set(titles)) > 1


@pytest.mark.slow
def test_every_scalar_of_every_run_is_finite(served_comparison):
    base, tags = served_comparison
    checked = 0
    for run, run_tags in tags.items():
        for tag in run_tags:
            values = [value for _, _, value in scalar_values(base, run, tag)]
            assert len(values) == 2, (run, tag)  # one per epoch
            assert all(math.isfinite(v) for v in values), (run, tag, values)
            checked += 1
    # Keras's 2 metrics in 8 runs, and the monitor's figures in 3.
    assert checked > 16 + 3 * 20
