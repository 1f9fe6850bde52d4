"""keras-tuner search spaces that decide where batch normalization goes.

Everything in bn-keras that imports `keras_tuner` lives in this package:

- `bn_hyperparameters(hp, name, ...)`: one block's BN choices, for your
  own `keras_tuner.HyperModel`; returns what `bn_keras.layers.BNBlock`
  takes.
- `BNHyperModel`: base hypermodel whose trials fail cleanly when BN
  weights turn non-finite, and whose TensorBoard and `BatchNormMonitor`
  callbacks write to one folder per trial.
- `BNPlacementHyperModel(model, ...)`: searches BN in your own model, slot
  by slot, through `bn_keras.insert_batchnorm`.
- `BNSearchMLP`, `BNSearchCNN`: ready-made hypermodels.
- `placement_report(tuner)`: the completed trials and their choices.
- `ResumableGridSearch`: `keras_tuner.GridSearch` that resumes after an
  interruption (keras-tuner 1.4.8's does not: keras-team/keras-tuner#1055).
- `get_tuner(name)`: the tuner class behind `"random"`, `"grid"`,
  `"hyperband"` or `"bayesian"`.

Needs keras-tuner (`pip install 'bn-keras[tuner]'`): without it, importing
this package raises `ModuleNotFoundError` saying so.
"""

from bn_keras._optional import require

require(["keras_tuner"], "bn_keras.tuner")

from bn_keras.tuner.bn_hypermodel import BNHyperModel  # noqa: E402
from bn_keras.tuner.bn_hyperparameters import bn_hyperparameters  # noqa: E402
from bn_keras.tuner.bn_placement_hypermodel import BNPlacementHyperModel  # noqa: E402
from bn_keras.tuner.bn_search_cnn import BNSearchCNN  # noqa: E402
from bn_keras.tuner.bn_search_mlp import BNSearchMLP  # noqa: E402
from bn_keras.tuner.get_tuner import get_tuner  # noqa: E402
from bn_keras.tuner.placement_report import placement_report  # noqa: E402
from bn_keras.tuner.resumable_grid_search import ResumableGridSearch  # noqa: E402

__all__ = [
    "BNHyperModel",
    "BNPlacementHyperModel",
    "BNSearchCNN",
    "BNSearchMLP",
    "ResumableGridSearch",
    "bn_hyperparameters",
    "get_tuner",
    "placement_report",
]
