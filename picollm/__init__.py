"""picollm: train tiny language models, sweep their hyperparameters, and read the losses honestly.

From Python or a notebook (see :mod:`picollm.api` for every function and its example)::

    import picollm
    run = picollm.train(picollm.load_config("experiments/quick.yaml", ["train.max_tokens=20000"]))
    run.plot()                        # the loss curves, as a matplotlib Figure

The API is imported lazily (module ``__getattr__``): ``import picollm`` loads neither torch nor
Optuna nor W&B, so a kernel or a CLI pays for them only when it uses them.
"""

import importlib
import os
import sys
import types
from typing import Any

# Transparent huge pages for PyTorch's CPU allocator: large activation and logits buffers are
# first-touched page by page otherwise, which measured as a large share of a CPU step. Must be set
# before torch is imported, which is why it lives here; a user's own setting wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"

__all__ = ["evaluate", "generate", "inspect", "load_config", "noise", "sweep", "train"]

# ``picollm.train``, ``picollm.generate`` and ``picollm.evaluate`` are also the modules behind
# ``python -m picollm.<name>``. Python binds a submodule onto its package when it is imported, so
# these three names stay the modules (``from picollm import train as train_mod`` keeps working)
# and calling one runs the API function of the same name.
_CALLABLE_MODULES = ("train", "generate", "evaluate")


class _CallableModule(types.ModuleType):
    """A module that, called, runs :mod:`picollm.api`'s function of the same name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from picollm import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CALLABLE_MODULES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule  # the import system binding picollm.<name> onto us
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in __all__:
        from picollm import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
