"""What `BNSearchMLP` and `BNSearchCNN` share: arguments, head, compile."""

import keras
import keras_tuner

from bn_keras import registry
from bn_keras._validation import is_integer
from bn_keras.layers.bn_block import BNBlock
from bn_keras.tuner.bn_hypermodel import BNHyperModel
from bn_keras.tuner.bn_hyperparameters import INPUT_BATCHNORM
from bn_keras.tuner.bn_hyperparameters import NORMALIZATIONS
from bn_keras.tuner.bn_hyperparameters import bn_hyperparameters
from bn_keras.tuner.bn_hyperparameters import canonical_normalizations
from bn_keras.tuner.bn_hyperparameters import canonical_placements
from bn_keras.tuner.bn_hyperparameters import check_choices
from bn_keras.tuner.bn_hyperparameters import declare_choice
from bn_keras.tuner.bn_hyperparameters import declare_input_batchnorm
from bn_keras.tuner.bn_hyperparameters import input_batchnorm_candidates
from bn_keras.tuner.bn_hyperparameters import number_candidates
from bn_keras.tuner.bn_hyperparameters import scope

LEARNING_RATE = "learning_rate"
#: The pre-activation placement: BN and the activation before the layer.
_PRE = "bn-act-layer"


def _input_placements(placements):
    """The placements of the first block, which reads the input: there
    `"bn-act-layer"` counts as `"layer-act"` (the input has no activation
    to put after a BN), as for `bn_keras.insert_batchnorm`."""
    return tuple(
        dict.fromkeys("layer-act" if p == _PRE else p for p in placements)
    )


def _check_num_classes(num_classes):
    """`None` for regression (`None` or 1), else the number of classes."""
    if num_classes is None:
        return None
    valid = is_integer(num_classes)
    if not valid or num_classes < 1:
        raise (TypeError if not valid else ValueError)(
            "Argument `num_classes` must be a positive integer, or None "
            "(or 1) for regression. "
            f"Received: num_classes={num_classes!r}"
        )
    return None if num_classes == 1 else int(num_classes)


def _check_input_shape(input_shape):
    """`None`, or the shape of one sample as a tuple."""
    if input_shape is None:
        return None
    if not isinstance(input_shape, (list, tuple)) or not all(
        d is None or is_integer(d) for d in input_shape
    ):
        raise TypeError(
            "Argument `input_shape` must be None or a tuple of "
            "integers (without the batch axis). "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(input_shape)


class SearchModel(BNHyperModel):
    """A stack of `BNBlock`s with a head, searched block by block.

    The subclasses name the depth and width arguments (`depth_name`,
    `width_name`: also the hyperparameter names), make the layer each block
    wraps, and pass every other argument on, by keyword, to this class,
    which holds their defaults (as `keras.layers.Conv2D` passes its
    `**kwargs` on to `keras.layers.Layer`).
    """

    #: Name of the depth hyperparameter and of the block width one.
    depth_name: str | None = None
    width_name: str | None = None

    def __init__(
        self,
        num_classes,
        *,
        depth,
        width,
        input_batchnorm,
        input_shape=None,
        learning_rate=(1e-3, 1e-2),
        activation="relu",
        placements=registry.PLACEMENTS,
        normalizations=NORMALIZATIONS,
        name=None,
        tunable=True,
        **choices,
    ):
        super().__init__(name=name, tunable=tunable)
        self.num_classes = _check_num_classes(num_classes)
        self.input_shape = _check_input_shape(input_shape)
        self.depth = number_candidates(self.depth_name, depth, int, 1)
        self.width = number_candidates(self.width_name, width, int, 1)
        self.learning_rate = number_candidates(
            LEARNING_RATE, learning_rate, float, 0.0
        )
        self.activation = activation
        keras.activations.get(activation)  # fails early on a bad name
        self.placements = canonical_placements(placements)
        self.normalizations = canonical_normalizations(normalizations)
        self.input_batchnorm = input_batchnorm_candidates(
            INPUT_BATCHNORM, input_batchnorm
        )
        self.choices = check_choices(self, choices)
        # Validates every choice now rather than in the first trial.
        bn_hyperparameters(
            keras_tuner.HyperParameters(),
            "block_0",
            placements=self.placements,
            normalizations=self.normalizations,
            **self.choices,
        )

    def make_layer(self, index, width):
        """The layer that block `index` wraps."""
        raise NotImplementedError

    def after_block(self, index):
        """Layers that follow block `index` (pooling)."""
        return []

    def before_head(self):
        """Layers between the last block and the head."""
        return []

    def _declare_blocks(self, hp, depth):
        """Declares every block's choices; returns `(width, BNBlock
        arguments)` of the `depth` blocks built."""
        blocks = []
        for i in range(max(self.depth)):
            # Block i exists only for depths above i: its choices are
            # conditional on the depth, so a grid does not go over them
            # when the block is absent.
            deeper = [d for d in self.depth if d > i]
            placements = self.placements
            if i == 0:  # it reads the input: no BN before it
                placements = _input_placements(placements)
            with scope(hp, self.depth_name, deeper, self.depth):
                width = declare_choice(
                    hp, f"block_{i}/{self.width_name}", self.width
                )
                bn = bn_hyperparameters(
                    hp,
                    f"block_{i}",
                    placements=placements,
                    normalizations=self.normalizations,
                    **self.choices,
                )
            if i < depth:
                if bn["placement"] not in placements:  # set in `hp`
                    bn = {"placement": "layer-act", "normalization": None}
                blocks.append((width, bn))
        return blocks

    def _block_layers(self, i, blocks):
        """Block `i` and the layers after it: one activation between two
        consecutive layers (see the class docstrings)."""

        def pre(j):
            return j < len(blocks) and blocks[j][1]["placement"] == _PRE

        width, bn = blocks[i]
        before_next = pre(i + 1)  # the next block applies this activation
        activation = None if before_next and not pre(i) else self.activation
        layers = [
            BNBlock(
                self.make_layer(i, width),
                activation=activation,
                name=f"block_{i}",
                **bn,
            )
        ]
        if pre(i) and not before_next:
            layers.append(
                keras.layers.Activation(self.activation, name=f"block_{i}_act")
            )
        return layers + self.after_block(i)

    def build(self, hp):
        layers = []
        if self.input_shape is not None:
            layers.append(keras.Input(self.input_shape))
        input_bn = declare_input_batchnorm(
            hp, INPUT_BATCHNORM, self.input_batchnorm
        )
        if isinstance(input_bn, bool):  # True: plain BN
            input_bn = "batch" if input_bn else "none"
        normalizer = registry.get_input_normalization(input_bn, name="input_bn")
        if normalizer is not None:
            layers.append(normalizer)
        depth = declare_choice(hp, self.depth_name, self.depth)
        blocks = self._declare_blocks(hp, depth)
        for i in range(len(blocks)):
            layers.extend(self._block_layers(i, blocks))
        layers.extend(self.before_head())
        learning_rate = declare_choice(hp, LEARNING_RATE, self.learning_rate)
        model = keras.Sequential(layers, name=self.name or None)
        if self.num_classes is None:
            model.add(keras.layers.Dense(1, name="head"))
            loss, metrics = "mse", ["mae"]
        else:
            model.add(keras.layers.Dense(self.num_classes, name="head"))
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            metrics = ["accuracy"]
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            loss=loss,
            metrics=metrics,
        )
        return model

