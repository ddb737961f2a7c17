"""picollm: train tiny language models, sweep their hyperparameters, and read the losses honestly.

``import picollm`` loads neither torch nor Optuna nor W&B: the API (:mod:`picollm.api`) imports them when used.
"""

import os

# Transparent huge pages for torch's CPU allocator (large buffers are slow to first-touch page by page); set before
# torch is imported; a user's own setting wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from picollm.api import (
    delete_sweep,
    evaluate,
    extend,
    generate,
    inspect,
    load_config,
    load_sweep,
    noise,
    resume,
    sweep,
    train,
)

__version__ = "0.1.0"

__all__ = [
    "delete_sweep",
    "evaluate",
    "extend",
    "generate",
    "inspect",
    "load_config",
    "load_sweep",
    "noise",
    "resume",
    "sweep",
    "train",
]
