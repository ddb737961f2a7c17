"""picollm: train tiny language models, sweep their hyperparameters, and read the losses honestly.

``import picollm`` loads neither torch nor Optuna nor W&B: the API (:mod:`picollm.api`) imports them when used.
"""

import os

# Transparent huge pages for torch's CPU allocator (large buffers are slow to first-touch page by page); set before
# torch is imported; a user's own setting wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from picollm.api import *  # noqa: F403  (the API's functions, named once: picollm.api.__all__)
from picollm.api import __all__ as __all__

__version__ = "0.1.0"
