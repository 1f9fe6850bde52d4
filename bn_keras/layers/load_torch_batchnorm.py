"""Load the weights of a PyTorch batch normalization layer into a Keras one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from bn_keras._statistics import set_statistics


def _array(value):
    """A state dict entry (a tensor, on any device, or an array) as NumPy."""
    if hasattr(value, "detach"):  # a torch.Tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_layer(layer):
    if not isinstance(layer, keras.layers.BatchNormalization):
        raise TypeError(
            "Argument `layer` must be a batch normalization layer "
            "(`bn_keras.layers.BatchNormalization` or Keras's). "
            f"Received: layer={layer!r}"
        )
    if not layer.built:
        raise ValueError(
            "Argument `layer` must be built to take weights: call it (or "
            "the model around it) on an input first, or `layer.build"
            "(input_shape)`. "
            f"Received: layer=<{type(layer).__name__} name={layer.name}, "
            "built=False>"
        )


def _entries(layer, state_dict, prefix):
    """`{key: array}` of the entries the layer takes, checked."""
    keys = [prefix + "running_mean", prefix + "running_var"]
    if not all(key in state_dict for key in keys):
        raise ValueError(
            f"Argument `state_dict` has no `{keys[0]}` and `{keys[1]}`: a "
            "PyTorch layer with `track_running_stats=False` has none, and "
            "normalizes with batch statistics in eval mode too, which a "
            "Keras layer does not do (or `prefix` is wrong). "
            f"Received: prefix={prefix!r}, keys={sorted(state_dict)[:8]}"
        )
    affine = [prefix + "weight", prefix + "bias"]
    has_affine = [key in state_dict for key in affine]
    if has_affine != [layer.scale, layer.center]:
        raise ValueError(
            "The layer's `scale` and `center` must match PyTorch's `affine` "
            "(`weight` and `bias` in the state dict): build it with "
            f"`scale={has_affine[0]}, center={has_affine[1]}`. "
            f"Received: scale={layer.scale}, center={layer.center}"
        )
    entries = {
        key[len(prefix) :]: _array(state_dict[key])
        for key in keys + [k for k, has in zip(affine, has_affine) if has]
    }
    channels = tuple(layer.moving_mean.shape)
    for key, value in entries.items():
        if value.shape != channels:
            raise ValueError(
                f"The state dict's `{prefix}{key}` has shape {value.shape}, "
                f"the layer's statistics {channels}. "
                f"Received: {prefix}{key}.shape={value.shape}"
            )
    return entries


def load_torch_batchnorm(
    layer: keras.layers.BatchNormalization,
    state_dict: Mapping[str, Any],
    prefix: str = "",
) -> keras.layers.BatchNormalization:
    """Sets a batch normalization layer's weights from a PyTorch state dict.

    The weights of a PyTorch `nn.BatchNorm1d`, `2d`, `3d` (or
    `nn.SyncBatchNorm`), read from `state_dict` (its `state_dict()`, or
    that of the model around it with the layer's `prefix`), go into a
    built `bn_keras.layers.BatchNormalization` (or Keras's):

    - `weight` and `bias` become `gamma` and `beta` (for PyTorch's
      `affine=False`, build the layer with `scale=False, center=False`);
    - `running_mean` becomes `moving_mean`;
    - `running_var` becomes `moving_variance` unchanged. PyTorch averages
      the *unbiased* variance of each training batch (`n / (n - 1)` times
      the biased one, for `n` values of a channel in a batch); Keras
      averages the biased one. Inference divides by the stored value in
      both, so the loaded layer computes what PyTorch's eval mode computes;
      training on, the layer averages biased variances into it (for
      `momentum=None`, the pooled variance of all values; see
      `bn_keras.layers.BatchNormalization`);
    - `num_batches_tracked` becomes the layer's `num_batches_tracked` when
      its statistics are cumulative (`momentum=None`), so that the average
      goes on with the batches PyTorch counted; otherwise it is not used;
    - for a renorm layer, `moving_stddev`, `renorm_mean` and
      `renorm_stddev` follow from the statistics, so that renorm's
      correction starts at the identity.

    A state dict holds no arguments: build the layer with PyTorch's (see
    the table of conventions in the docs): `epsilon=1e-5` for PyTorch's
    default `eps`, `momentum=1 - m` for PyTorch's `momentum=m` (0.9 for
    its default 0.1; `None` for `None`), and `axis=1` for PyTorch's
    channels-first inputs (`-1` in a port to channels-last inputs).

    Args:
        layer: A built batch normalization layer.
        state_dict: A mapping from names to tensors (on any device) or
            arrays.
        prefix: The layer's prefix in `state_dict`, such as
            `"layer1.0.bn1."`. Defaults to `""`.

    Returns:
        The layer.

    Example:

    >>> state = {
    ...     "weight": np.array([1.0, 2.0]), "bias": np.array([0.0, 0.5]),
    ...     "running_mean": np.array([0.1, -0.2]),
    ...     "running_var": np.array([1.5, 0.5]),
    ...     "num_batches_tracked": np.array(12),
    ... }
    >>> layer = bn_keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9)
    >>> layer.build((None, 2))
    >>> _ = bn_keras.layers.load_torch_batchnorm(layer, state)
    >>> x = np.array([[1.0, 1.0]], "float32")
    >>> y = (x - state["running_mean"]) / np.sqrt(state["running_var"] + 1e-5)
    >>> y = y * state["weight"] + state["bias"]
    >>> bool(np.allclose(layer(x), y, atol=1e-6))
    True
    """
    _check_layer(layer)
    entries = _entries(layer, state_dict, prefix)
    if layer.scale:
        layer.gamma.assign(entries["weight"].astype("float32"))
    if layer.center:
        layer.beta.assign(entries["bias"].astype("float32"))
    set_statistics(layer, entries["running_mean"], entries["running_var"])
    counter = getattr(layer, "num_batches_tracked", None)
    key = prefix + "num_batches_tracked"
    if counter is not None and key in state_dict:
        counter.assign(int(_array(state_dict[key])))
    return layer
