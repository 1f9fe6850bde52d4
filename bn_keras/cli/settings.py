"""What the commands take, validated: one frozen dataclass per command.

`compare.parse` and `search.parse` build them from the options, before
Keras is imported; `bn_keras.cli.experiment` trains from them.
"""

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """What both commands take, validated (see their `--help`)."""

    model: str
    placements: tuple
    normalizations: tuple
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    quick: bool = False
    verbose: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComparisonSettings(Settings):
    """What `bn-keras compare` trains, validated (see its `--help`)."""

    momentum: float
    ghost_batch_size: int
    input_batchnorms: tuple = ("none",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSettings(Settings):
    """What `bn-keras search` searches, validated (see its `--help`)."""

    hypermodel: str
    shared: bool
    tuner: str
    trials: int
