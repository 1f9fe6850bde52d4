"""bn-keras: batch normalization done right for Keras 3."""

__version__ = "0.1.0"

from bn_keras import layers  # noqa: E402
from bn_keras.models import find_batchnorm  # noqa: E402

__all__ = ["__version__", "find_batchnorm", "layers"]
