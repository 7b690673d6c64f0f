"""mixsearch: hardware-aware multi-objective architecture search of compact vision models."""

import logging as _logging

# torch logs a CUDA_HOME notice on import when a CUDA toolkit is installed without a GPU driver;
# it would be a second line beside every one-line error. Filtered before anything imports torch.
_logging.getLogger("torch.utils.cpp_extension").addFilter(lambda record: record.levelno >= _logging.ERROR)

from .arch import MixerArch, MobileNetArch, arch_from_dict, arch_hash
from .export import load_model
from .models import build_model

__all__ = ["MixerArch", "MobileNetArch", "arch_from_dict", "arch_hash", "build_model", "load_model"]
__version__ = "0.1.0"
