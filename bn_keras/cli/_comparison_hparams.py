"""The HParams dashboard of `bn-keras compare`: one session per configuration.

Each configuration's run holds its session and the experiment config,
written by its `BatchNormMonitor`: the placement (every placement that
builds the configuration's network: `"layer-bn-act = bn-act-layer"` where
pre-activation builds layer-bn-act's network), the normalization, the
input normalization (when the comparison tries several), the momentum
and, when ghost batches are compared, the ghost batch size; the objective
first among the metrics (its best value, as the leaderboard ranks by,
then its final value), then the validation loss and the monitor's
model-wide figures. Every configuration has every hyperparameter, `"none"`
where it does not apply (the configuration without BN), so that the
parallel-coordinates view keeps them all; values are strings, so that
their type is the same in every session.
"""

from bn_keras.callbacks._hparams import NONE


def configuration_hparams(configuration, settings):
    """The HParams values of one configuration of a comparison.

    Args:
        configuration: A `bn_keras.cli.experiment.Configuration`.
        settings: The comparison's `ComparisonSettings`.

    Returns:
        A dict from hyperparameter name to a string, in the order the
        dashboard shows them.
    """
    has_bn = configuration.has_batchnorm
    values = {
        "placement": configuration.placements if has_bn else NONE,
        "normalization": configuration.normalization if has_bn else NONE,
    }
    if tuple(settings.input_batchnorms) != ("none",):
        values["input normalization"] = configuration.input_batchnorm
    any_bn = has_bn or configuration.input_batchnorm != NONE
    values["momentum"] = f"{settings.momentum:g}" if any_bn else NONE
    if "ghost" in settings.normalizations:
        ghost = has_bn and configuration.normalization == "ghost"
        values["ghost batch size"] = (
            str(settings.ghost_batch_size) if ghost else NONE
        )
    return values
