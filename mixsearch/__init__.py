"""mixsearch: hardware-aware multi-objective architecture search of compact vision models."""

import logging as _logging

# torch logs a CUDA_HOME notice on import when a CUDA toolkit is installed without a GPU driver;
# it would be a second line beside every one-line error. Filtered before anything imports torch.
_logging.getLogger("torch.utils.cpp_extension").addFilter(lambda record: record.levelno >= _logging.ERROR)

# The public names load on first use: importing the package must not import torch, so that the
# command line starts quickly (``run --jobs`` starts its workers before it imports torch itself).
_PUBLIC = {"MixerArch": "arch", "MobileNetArch": "arch", "arch_from_dict": "arch", "arch_hash": "arch",
           "build_model": "models", "load_model": "export"}

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
