"""Peak inference memory of one forward pass, found by tracing the network with ``torch.fx``.

Peak memory = unique weight bytes + the largest total size of activation tensors alive at once.
The inference form is traced, then run node by node on ``meta`` tensors (shapes only, no storage),
so the figure is known for any arch without allocating it. A tensor is alive from the node that
creates it to the last node that reads it (or reads a view of it); a view (``transpose``,
``flatten``...) or an in-place op (``ReLU(inplace=True)``) makes no new tensor, it extends the
life of the one it aliases. This is the model of the MCUNet line of work: it is what decides
whether a network fits the memory of a small device, with a runtime that frees each activation
after its last use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn


@dataclass(frozen=True)
class MemoryProfile:
    weight_bytes: int             # unique parameters and buffers (a shared tensor once)
    peak_activation_bytes: int    # largest total of activations alive at one node
    activation_bytes_written: int  # every activation the pass creates, summed (memory traffic)
    peak_node: str                # the node at which the peak is reached
    live_at_peak: tuple[str, ...]  # the nodes whose outputs are alive there

    @property
    def peak_bytes(self) -> int:
        return self.weight_bytes + self.peak_activation_bytes


# Modules whose output is always a new tensor shaped like their input. On meta tensors such a node
# gets an empty tensor of that shape instead of running: a meta layer norm runs torch's Python
# reference of it (about 2 ms a call), a third of the time to count an arch, for a shape known in
# advance. Neither adds FLOPs (the counter counts matmuls and convolutions).
SHAPE_KEEPING = (nn.LayerNorm, nn.GELU)


class _Recorder(fx.Interpreter):
    """Runs the graph and keeps every node's output (meta tensors cost nothing to keep)."""

    def __init__(self, module: fx.GraphModule):
        super().__init__(module, garbage_collect_values=False)
        self.outputs: dict[fx.Node, object] = {}

    def run_node(self, node: fx.Node):
        result = self._shaped_like_input(node)
        if result is None:
            result = super().run_node(node)
        self.outputs[node] = result
        return result

    def _shaped_like_input(self, node: fx.Node) -> torch.Tensor | None:
        if node.op != "call_module" or not isinstance(self.module.get_submodule(node.target), SHAPE_KEEPING):
            return None
        source = self.outputs.get(node.args[0]) if node.args else None
        if not isinstance(source, torch.Tensor) or source.device.type != "meta":
            return None
        return torch.empty_like(source)


def weight_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def trace(model: nn.Module) -> fx.GraphModule:
    return fx.symbolic_trace(model)


def peak_memory(model: nn.Module, example: torch.Tensor) -> MemoryProfile:
    """Peak memory of ``model(example)``; pass a ``meta`` model and example to allocate nothing."""
    graph_module = trace(model)
    recorder = _Recorder(graph_module)
    with torch.no_grad():
        recorder.run(example)
    nodes = list(graph_module.graph.nodes)
    weights = {id(t) for t in [*model.parameters(), *model.buffers()]}

    # Each tensor output either starts a new buffer or aliases an existing one (a view of it, or
    # the very same object returned by an in-place op).
    owner: dict[int, fx.Node] = {}      # id of a root tensor -> node that created it
    buffer_of: dict[fx.Node, fx.Node] = {}
    size: dict[fx.Node, int] = {}
    start: dict[fx.Node, int] = {}
    end: dict[fx.Node, int] = {}
    for index, node in enumerate(nodes):
        result = recorder.outputs.get(node)
        if not isinstance(result, torch.Tensor) or node.op == "get_attr":
            continue
        root = result._base if result._base is not None else result
        if id(root) in weights:
            continue
        if id(root) in owner:
            buffer_of[node] = owner[id(root)]
            continue
        owner[id(root)] = node
        buffer_of[node] = node
        size[node] = root.numel() * root.element_size()
        start[node] = end[node] = index
    for index, node in enumerate(nodes):
        for used in node.all_input_nodes:
            if used in buffer_of:
                buffer = buffer_of[used]
                end[buffer] = max(end[buffer], index)

    # A sweep over the nodes: a buffer is added where it is created and dropped after its last use.
    change = [0] * (len(nodes) + 1)
    for buffer, nbytes in size.items():
        change[start[buffer]] += nbytes
        change[end[buffer] + 1] -= nbytes
    peak, peak_index, total = 0, 0, 0
    for index in range(len(nodes)):
        total += change[index]
        if total > peak:
            peak, peak_index = total, index
    live_at_peak = tuple(b.name for b in size if start[b] <= peak_index <= end[b])
    return MemoryProfile(weight_bytes=weight_bytes(model), peak_activation_bytes=peak,
                         activation_bytes_written=sum(size.values()), peak_node=nodes[peak_index].name,
                         live_at_peak=live_at_peak)
