"""mixsearch: hardware-aware multi-objective architecture search of compact vision models."""

from .arch import MixerArch, MobileNetArch, arch_from_dict, arch_hash
from .export import load_model
from .models import build_model

__all__ = ["MixerArch", "MobileNetArch", "arch_from_dict", "arch_hash", "build_model", "load_model"]
__version__ = "0.1.0"
