"""Batch normalization layers, and loading PyTorch's weights into them."""

from bn_keras.layers.batch_normalization import BatchNormalization
from bn_keras.layers.batch_renormalization import BatchRenormalization
from bn_keras.layers.bn_block import BNBlock
from bn_keras.layers.ghost_batch_normalization import GhostBatchNormalization
from bn_keras.layers.load_torch_batchnorm import load_torch_batchnorm
from bn_keras.layers.renorm_clipping import RenormClipping

__all__ = [
    "BNBlock",
    "BatchNormalization",
    "BatchRenormalization",
    "GhostBatchNormalization",
    "RenormClipping",
    "load_torch_batchnorm",
]
