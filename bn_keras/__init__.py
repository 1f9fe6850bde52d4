"""bn-keras: batch normalization done right for Keras 3."""

__version__ = "0.1.0"

from bn_keras import callbacks  # noqa: E402
from bn_keras import layers  # noqa: E402
from bn_keras import registry  # noqa: E402
from bn_keras.models import find_batchnorm  # noqa: E402
from bn_keras.models import fold_batchnorm  # noqa: E402
from bn_keras.models import freeze_batchnorm  # noqa: E402
from bn_keras.models import insert_batchnorm  # noqa: E402
from bn_keras.models import recalibrate  # noqa: E402
from bn_keras import tuner  # noqa: E402  (keras-tuner adds ~0.2 s)

__all__ = [
    "__version__",
    "callbacks",
    "find_batchnorm",
    "fold_batchnorm",
    "freeze_batchnorm",
    "insert_batchnorm",
    "layers",
    "recalibrate",
    "registry",
]
