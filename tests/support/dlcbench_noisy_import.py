"""A module that is noisy while imported, as TensorFlow is: C-level writes to fd 2, Python stderr, a logger."""

import logging
import os
import sys

os.write(2, b"NOISE from C at import\n")
print("NOISE from Python at import", file=sys.stderr)
logging.getLogger("tensorflow").warning("NOISE from a logger at import")

VALUE = 42
