"""Every static size of an arch (params, FLOPs, peak memory) before a tensor is allocated.

The model is built on the ``meta`` device: modules get tensors with shapes and no storage, so a
hidden width of 10^9 costs as little to count as one of 10. FLOPs come from
``torch.utils.flop_counter`` run on meta tensors (it reads shapes only), peak memory from
``memory.peak_memory``. Only the number of layers is checked on the arch itself first, because
building a meta model still costs Python time per layer.

An arch over a limit is impossible (``ArchError``, with the figure and the limit). The limits are
set well above anything this tool can train on a CPU, and well below what would fail to allocate:

- ``MAX_LAYERS`` 64 Mixer layers or MobileNet blocks: twice Mixer-H (32 layers), 4× MobileNetV2
  (17 blocks). Counting on meta tensors costs about 10-40 ms per layer (their shape functions run
  in Python), so depth is what bounds the time to check an arch; a million-layer space is
  refused before any module is made.
- ``MAX_WIDTH`` 2^31 - 1 per width: tensor dimensions past it overflow 32-bit indexing in kernels.
- ``MAX_PARAMS`` 10^8: 400 MB of float32 weights, 4× ResNet-50, 30× MobileNetV2; a compact
  vision model for small devices is far below it.
- ``MAX_FLOPS`` 10^11 per image: 10× ResNet-50 at 224², at which one MNIST epoch on a CPU takes days.
- ``MAX_MEMORY`` 4 GiB peak inference memory: beyond any device this search is for, and close to
  what a training batch would need many times over on the machine that runs it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..arch import Arch, arch_hash
from ..errors import ArchError
from ..models import count_params  # unique parameters: a shared tensor counts once
from .memory import MemoryProfile, peak_memory

MAX_LAYERS = 64
MAX_WIDTH = 2**31 - 1
MAX_PARAMS = 10**8
MAX_FLOPS = 10**11
MAX_MEMORY = 4 * 2**30


@dataclass(frozen=True)
class StaticSizes:
    params: int            # unique parameters of the training form (shared tensors once)
    flops: int             # forward FLOPs per image, training form in eval mode
    inference_params: int
    inference_flops: int
    memory: MemoryProfile  # one forward pass of the inference form at the latency batch size


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs for one image, as counted by ``torch.utils.flop_counter`` (2 per MAC).

    The example is made on the model's device, so a meta model is counted without storage.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    example = torch.zeros((1, *input_shape), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example)
    model.train(was_training)
    return int(counter.get_total_flops())


def check_shape(arch: Arch) -> None:
    """The limits that can be read off the arch itself, checked before anything is built."""
    depth = arch.layers if arch.family == "mixer" else len(arch.blocks)
    what = "Mixer layers" if arch.family == "mixer" else "MobileNet blocks"
    if depth > MAX_LAYERS:
        raise ArchError(f"{depth:,} {what} is over the limit of {MAX_LAYERS}")
    if arch.family == "mixer":
        widths = {"channels": arch.channels, "token_hidden": arch.token_hidden,
                  "channel_hidden": arch.channel_hidden}
    else:
        widths = {"stem_channels": arch.stem_channels,
                  **{f"blocks[{i}].out_channels": b.out_channels for i, b in enumerate(arch.blocks)}}
    for name, width in widths.items():
        if width > MAX_WIDTH:
            raise ArchError(f"{name} {width:,} is over the limit of {MAX_WIDTH:,}")


def check_limit(figure: str, value: int, limit: int, unit: str = "") -> None:
    if value > limit:
        raise ArchError(f"{figure} {value:,}{unit} is over the limit of {limit:,}{unit}")


# Counted sizes of the archs this process met last, by arch hash, input shape and batch: a trial
# counts its arch when it samples it, and evaluation asks again for the activations per image.
_counted: OrderedDict[tuple[str, tuple[int, ...], int], StaticSizes] = OrderedDict()
COUNTED_KEPT = 64


def static_sizes(arch: Arch, input_shape: tuple[int, int, int], batch_size: int = 1) -> StaticSizes:
    """Params, FLOPs and peak memory of ``arch``, counted on a meta model (0.03-0.05 s, once per
    arch, shape and batch in a process); ``ArchError`` over a limit."""
    arch.validate()  # checks the depth and widths first (``check_shape``)
    key = (arch_hash(arch), tuple(input_shape), batch_size)
    if key not in _counted:
        _counted[key] = _count_sizes(arch, input_shape, batch_size)
        if len(_counted) > COUNTED_KEPT:
            _counted.popitem(last=False)
    return _counted[key]


def warm_up() -> None:
    """Count a small Mixer. The first count in a process takes about a second, most of it torch
    loading what meta tensors and the FLOP counter need; later ones of any family take 0.02-0.05 s.
    A worker of ``run --jobs`` does this while its parent checks the spec, so that its first trial
    does not."""
    from ..arch import MixerArch

    static_sizes(MixerArch(in_channels=1, image_size=(28, 28), num_classes=10, layers=1, channels=8,
                           token_hidden=8, channel_hidden=8, patch_size=7), (1, 28, 28))


def _count_sizes(arch: Arch, input_shape: tuple[int, int, int], batch_size: int) -> StaticSizes:
    from ..models import build_model, inference_model

    with torch.device("meta"):
        model = build_model(arch)
        inference = inference_model(model)
    params, inference_params = count_params(model), count_params(inference)
    check_limit("params", params, MAX_PARAMS)  # before the pass below, which costs more
    check_limit("inference params", inference_params, MAX_PARAMS)
    # Meta ops run Python shape functions (about a millisecond each), so the inference form is
    # run once: the FLOP counter watches the same pass that finds the peak memory.
    counter = FlopCounterMode(display=False)
    with counter:
        memory = peak_memory(inference, torch.zeros((batch_size, *input_shape), device="meta"))
    inference_flops = int(counter.get_total_flops()) // batch_size
    # A Mixer's inference form is its training form in eval mode (LayerNorm does not fold);
    # a MobileNet's differs (BN folded, linear blocks composed), so it is counted on its own.
    flops = inference_flops if arch.family == "mixer" else count_flops(model, input_shape)
    check_limit("FLOPs per image", max(flops, inference_flops), MAX_FLOPS)
    check_limit("peak inference memory", memory.peak_bytes, MAX_MEMORY, " bytes")
    return StaticSizes(params=params, flops=flops, inference_params=inference_params,
                       inference_flops=inference_flops, memory=memory)
