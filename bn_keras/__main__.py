"""`python -m bn_keras`: the `bn-keras` command line."""

import sys

from bn_keras.cli import main

if __name__ == "__main__":
    sys.exit(main())
