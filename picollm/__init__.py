"""picollm: train tiny language models, sweep their hyperparameters, and read the losses honestly."""

import os

# Transparent huge pages for PyTorch's CPU allocator: large activation and logits buffers are
# first-touched page by page otherwise, which measured as a large share of a CPU step. Must be set
# before torch is imported, which is why it lives here; a user's own setting wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
