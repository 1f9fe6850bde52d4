"""What `BNSearchMLP` and `BNSearchCNN` share: arguments, head, compile."""

import numbers

import keras
import keras_tuner

from bn_keras.layers.batch_normalization import BatchNormalization
from bn_keras.layers.bn_block import BNBlock
from bn_keras.tuner.bn_hypermodel import BNHyperModel
from bn_keras.tuner.bn_hyperparameters import number_candidates
from bn_keras.tuner.bn_hyperparameters import bn_hyperparameters
from bn_keras.tuner.bn_hyperparameters import canonical_normalizations
from bn_keras.tuner.bn_hyperparameters import canonical_placements
from bn_keras.tuner.bn_hyperparameters import declare_boolean
from bn_keras.tuner.bn_hyperparameters import declare_choice
from bn_keras.tuner.bn_hyperparameters import scope

LEARNING_RATE = "learning_rate"
INPUT_BATCHNORM = "input_batchnorm"

_CHOICES = (
    "momentum",
    "virtual_batch_size",
    "rmax",
    "dmax",
    "warmup_steps",
    "ramp_steps",
    "normalization_kwargs",
)


def _booleans(argument, value):
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values or not all(isinstance(v, bool) for v in values):
        raise TypeError(
            f"Argument `{argument}` must be a boolean or a list of booleans "
            f"to choose from. Received: {argument}={value!r}"
        )
    return tuple(dict.fromkeys(values))


class SearchModel(BNHyperModel):
    """A stack of `BNBlock`s with a head, searched block by block."""

    #: Name of the depth hyperparameter and of the block width one.
    depth_name = None
    width_name = None

    def __init__(
        self,
        num_classes,
        input_shape,
        depth,
        width,
        learning_rate,
        activation,
        placements,
        normalizations,
        input_batchnorm,
        name,
        tunable,
        choices,
    ):
        super().__init__(name=name, tunable=tunable)
        if num_classes is not None and (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
        ):
            raise TypeError(
                "Argument `num_classes` must be a positive integer, or None "
                "(or 1) for regression. "
                f"Received: num_classes={num_classes!r}"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(
                "Argument `num_classes` must be a positive integer, or None "
                "(or 1) for regression. "
                f"Received: num_classes={num_classes!r}"
            )
        self.num_classes = None if num_classes in (None, 1) else int(
            num_classes
        )
        if input_shape is not None:
            if not isinstance(input_shape, (list, tuple)) or not all(
                d is None
                or (isinstance(d, numbers.Integral) and not isinstance(d, bool))
                for d in input_shape
            ):
                raise TypeError(
                    "Argument `input_shape` must be None or a tuple of "
                    "integers (without the batch axis). "
                    f"Received: input_shape={input_shape!r}"
                )
            input_shape = tuple(input_shape)
        self.input_shape = input_shape
        self.depth = number_candidates(self.depth_name, depth, int, 1)
        self.width = number_candidates(self.width_name, width, int, 1)
        self.learning_rate = number_candidates(
            "learning_rate", learning_rate, float, 0.0
        )
        self.activation = activation
        keras.activations.get(activation)  # fails early on a bad name
        self.placements = canonical_placements(placements)
        self.normalizations = canonical_normalizations(normalizations)
        self.input_batchnorm = _booleans("input_batchnorm", input_batchnorm)
        unknown = sorted(set(choices) - set(_CHOICES))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword arguments "
                f"{unknown}; the choices it passes on to bn_hyperparameters "
                f"are {list(_CHOICES)}. Received: {unknown[0]}="
                f"{choices[unknown[0]]!r}"
            )
        self.choices = dict(choices)
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

    def build(self, hp):
        layers = []
        if self.input_shape is not None:
            layers.append(keras.Input(self.input_shape))
        if declare_boolean(hp, INPUT_BATCHNORM, self.input_batchnorm):
            layers.append(
                BatchNormalization(center=False, scale=False, name="input_bn")
            )
        depth = declare_choice(hp, self.depth_name, self.depth)
        for i in range(max(self.depth)):
            # Block i exists only for depths above i: its choices are
            # conditional on the depth, so a grid does not go over them
            # when the block is absent.
            deeper = [d for d in self.depth if d > i]
            with scope(hp, self.depth_name, deeper, self.depth):
                width = declare_choice(
                    hp, f"block_{i}/{self.width_name}", self.width
                )
                bn = bn_hyperparameters(
                    hp,
                    f"block_{i}",
                    placements=self.placements,
                    normalizations=self.normalizations,
                    **self.choices,
                )
            if i >= depth:
                continue
            layers.append(
                BNBlock(
                    self.make_layer(i, width),
                    activation=self.activation,
                    name=f"block_{i}",
                    **bn,
                )
            )
            layers.extend(self.after_block(i))
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

