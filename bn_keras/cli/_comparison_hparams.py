"""The HParams dashboard of `bn-keras compare`: one session per configuration.

The comparison's folder gets the experiment config (placement, then
normalization, then the BN settings; the objective first among the
metrics, then the validation loss and the monitor's model-wide figures),
and each configuration's run folder its session, named after the folder.
"""

from bn_keras.callbacks._hparams import discrete
from bn_keras.callbacks._hparams import experiment_metrics
from bn_keras.callbacks._hparams import write_experiment
from bn_keras.callbacks._hparams import write_session

#: The placement and normalization of the "no BN" configuration, as the
#: leaderboard shows them.
NONE = "none"


def _placement(configuration):
    return configuration.placement if configuration.has_batchnorm else NONE


def _has_ghost(settings):
    return "ghost" in settings.normalizations


def write_comparison_experiment(session, comparison):
    """Writes the experiment config of `comparison` in its folder."""
    settings = comparison.settings
    placements = [_placement(c) for c in comparison.configurations]
    hparams = [
        discrete("placement", list(dict.fromkeys(placements))),
        discrete("normalization", [*settings.normalizations, NONE]),
        discrete("momentum", [settings.momentum]),
    ]
    if _has_ghost(settings):
        hparams.append(
            discrete("ghost_batch_size", [settings.ghost_batch_size])
        )
    write_experiment(
        session, hparams, experiment_metrics([comparison.metric])
    )


def write_configuration_session(run_dir, configuration, settings):
    """Writes the session of one configuration's run, in `run_dir`."""
    values = {
        "placement": _placement(configuration),
        "normalization": configuration.normalization or NONE,
    }
    if configuration.has_batchnorm:
        values["momentum"] = settings.momentum
        if configuration.normalization == "ghost":
            values["ghost_batch_size"] = settings.ghost_batch_size
    write_session(run_dir, values, configuration.slug)
