"""Channel groups (from torch-pruning's dependency graph) and the gates that switch structures off.

A *group* is a set of layers whose channels must be removed together; a *structure* is one channel
index of one group. Groups come from ``torch_pruning.DependencyGraph`` so that no architecture needs
a hand-written table. Every producer of a group (a conv/linear whose output channels belong to it)
carries the group's gate: at the output of the BatchNorm that directly follows it, or at its own
output where no BatchNorm follows (method.md section 1). Setting a gate to 0 zeroes the channel
everywhere, which is exactly what physical removal does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import sys

import torch
import torch.nn as nn

from .errors import UnsupportedModelError


def _import_torch_pruning():
    """torch-pruning imports timm (over a second: torchvision, dynamo) only for its own FLOP counter,
    which this suite does not use; hide timm during that import unless it is loaded already."""
    if "timm" in sys.modules:
        import torch_pruning
        return torch_pruning
    sys.modules["timm"] = None  # makes `import timm` raise ImportError, which torch-pruning tolerates
    try:
        import torch_pruning
    finally:
        del sys.modules["timm"]
    return torch_pruning


tp = _import_torch_pruning()

PRODUCER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Layers whose output channel i depends on input channel i only (or that carry no channel at all):
# zeroing a channel before them is the same as removing it. Anything else in a group that also mixes
# channels (LayerNorm, GroupNorm, attention, ...) would make gates and surgery disagree.
CHANNELWISE_TYPES = PRODUCER_TYPES + BATCHNORM_TYPES + (nn.PReLU,)


class ChannelGroups(list):
    """The list of a model's groups, remembering the example input the graph was traced with."""

    def __init__(self, groups=(), example_input: torch.Tensor | None = None):
        super().__init__(groups)
        self.example_input = example_input


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable set of coupled channels.

    ``name`` is the first producer in module order (stable across runs and copies of the model);
    ``gated_modules`` are the modules whose output channels carry this group's gates.
    """

    name: str
    size: int
    gated_modules: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    normalized_modules: tuple[str, ...] = ()


def classifier_name(model: nn.Module, example_input: torch.Tensor) -> str:
    """The last conv/linear executed in a forward pass: its output units are the classes."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda m, i, o, n=n: order.append(n))
               for n, m in model.named_modules() if isinstance(m, PRODUCER_TYPES)]
    try:
        with torch.no_grad():
            _eval_forward(model, example_input)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise UnsupportedModelError("the model has no conv or linear layer to prune")
    return order[-1]


def _eval_forward(model: nn.Module, x: torch.Tensor):
    was_training = model.training
    model.eval()
    try:
        return model(x)
    finally:
        model.train(was_training)


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    finally:
        model.train(was_training)


def channel_groups(model: nn.Module, example_input: torch.Tensor,
                   unprunable: Sequence[str] = ()) -> ChannelGroups:
    """All prunable channel groups of ``model``, in module order.

    The classifier's outputs are never prunable. A model may declare more modules whose output
    channels must stay (attribute ``sosp_unprunable``; e.g. the residual stream of option-A ResNets,
    whose zero-padding shortcut torch-pruning cannot follow).
    """
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    order = {n: i for i, n in enumerate(modules)}
    keep_out = {classifier_name(model, example_input), *getattr(model, "sosp_unprunable", ()), *unprunable}
    unknown = sorted(n for n in keep_out if n not in modules)
    if unknown:
        raise UnsupportedModelError(f"unprunable modules not found in the model: {', '.join(unknown)}")
    graph = dependency_graph(model, example_input)
    ignored = [modules[n] for n in keep_out]
    groups = []
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRODUCER_TYPES):
        groups.append(_describe(tp_group, graph, names, order))
    groups.sort(key=lambda g: order[g.name])
    return ChannelGroups(groups, example_input=example_input[:1].detach())


def _describe(tp_group, graph: tp.DependencyGraph, names: dict, order: dict) -> ChannelGroup:
    producers, consumers, gated, normalized = [], [], [], []
    size = len(tp_group[0].idxs)
    for item in tp_group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue  # functional ops (add, concat, ...) carry no parameters
        name = names[module]
        is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
        if _is_channel_layernorm(module):
            if name not in normalized:
                normalized.append(name)
            continue
        if not isinstance(module, CHANNELWISE_TYPES) and _has_channel_params(module):
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) mixes or rescales the channels of group "
                f"rooted at {names[tp_group[0].dep.target.module]!r}; gates cannot remove its "
                "channels exactly, so this model is not supported")
        if not isinstance(module, PRODUCER_TYPES):
            continue
        if is_out:
            if list(item.idxs) != list(range(size)):
                raise UnsupportedModelError(f"producer {name!r} maps the group's channels out of order")
            producers.append(name)
            gated.append(names[_gate_site(graph, module)])
        elif name not in consumers:
            consumers.append(name)
    producers = sorted(set(producers), key=order.__getitem__)
    gated = sorted(set(gated), key=order.__getitem__)
    return ChannelGroup(name=producers[0], size=size, gated_modules=tuple(gated),
                        producers=tuple(producers), consumers=tuple(sorted(consumers, key=order.__getitem__)),
                        normalized_modules=tuple(sorted(normalized, key=order.__getitem__)))


def _is_channel_layernorm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1


def _has_channel_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _gate_site(graph: tp.DependencyGraph, producer: nn.Module) -> nn.Module:
    """The BatchNorm right after ``producer`` if its output goes only there, else the producer."""
    outputs = graph.module2node[producer].outputs
    if len(outputs) == 1 and isinstance(outputs[0].module, BATCHNORM_TYPES):
        return outputs[0].module
    return producer


def total_structures(groups: Sequence[ChannelGroup]) -> int:
    return sum(g.size for g in groups)


def split_flat(flat: torch.Tensor, groups: Sequence[ChannelGroup]) -> list[torch.Tensor]:
    """Split a vector (or a ``B x S`` matrix) over all structures into one piece per group."""
    return list(torch.split(flat, [g.size for g in groups], dim=-1))


def channel_dim(module: nn.Module) -> int:
    """Where a module's output keeps its channels: last for Linear/LayerNorm (channels-last), else 1.

    timm's ``LayerNorm2d`` subclasses ``nn.LayerNorm`` but takes and returns NCHW tensors.
    """
    if isinstance(module, nn.LayerNorm) and not type(module).__name__.endswith("2d"):
        return -1
    return -1 if isinstance(module, nn.Linear) else 1


def gated_layer_norm(module: nn.LayerNorm, x: torch.Tensor, gate: torch.Tensor, dim: int) -> torch.Tensor:
    """LayerNorm over the channels with gate-weighted statistics, output multiplied by the gate.

    Removing a channel changes the mean and variance that a channel LayerNorm computes over the
    others, so a plain output gate would not match surgery. With weights ``c``:
    ``mu = sum c x / sum c``, ``var = sum c (x - mu)^2 / sum c``. At ``c = 1`` this is the layer
    itself; with some ``c_s = 0`` it is exactly the pruned layer; in between it is differentiable, so
    the derivatives of SOSP include how a channel's removal renormalises the others.
    """
    w = broadcast_gate(gate, x, dim).to(x.dtype)
    count = w.sum(dim=dim, keepdim=True)
    mean = (w * x).sum(dim=dim, keepdim=True) / count
    var = (w * (x - mean) ** 2).sum(dim=dim, keepdim=True) / count
    out = (x - mean) * torch.rsqrt(var + module.eps)
    if module.elementwise_affine:
        shape = [1] * x.dim()
        shape[dim] = -1
        out = out * module.weight.reshape(shape)
        if module.bias is not None:
            out = out + module.bias.reshape(shape)
    return out * w


def broadcast_gate(gate: torch.Tensor, output: torch.Tensor, dim: int) -> torch.Tensor:
    """Shape a ``(C,)`` or per-sample ``(B, C)`` gate to multiply ``output`` along channel ``dim``."""
    shape = [1] * output.dim()
    shape[dim] = gate.shape[-1]
    if gate.dim() == 2:
        shape[0] = gate.shape[0]
    return gate.reshape(shape)


@contextlib.contextmanager
def gates_applied(model: nn.Module, groups: Sequence[ChannelGroup],
                  gates: Sequence[torch.Tensor] | torch.Tensor) -> Iterator[None]:
    """Multiply every gated module's output by its group's gate while the block runs.

    ``gates`` is one tensor per group, or one flat tensor over all structures; each of shape ``(C,)``
    (shared by the batch) or ``(B, C)`` (per-sample gates, for per-sample Jacobians).
    """
    if isinstance(gates, torch.Tensor):
        gates = split_flat(gates, groups)
    if len(gates) != len(groups):
        raise ValueError(f"{len(gates)} gate tensors for {len(groups)} groups")
    modules = dict(model.named_modules())
    handles = []
    try:
        for group, gate in zip(groups, gates):
            for name in group.gated_modules:
                module = modules[name]
                dim = channel_dim(module)
                handles.append(module.register_forward_hook(
                    lambda m, i, out, gate=gate, dim=dim: out * broadcast_gate(gate, out, dim)))
            for name in group.normalized_modules:
                module = modules[name]
                dim = channel_dim(module)
                handles.append(module.register_forward_hook(
                    lambda m, i, out, gate=gate, dim=dim: gated_layer_norm(m, i[0], gate, dim)))
        yield
    finally:
        for h in handles:
            h.remove()


def zero_gates(groups: Sequence[ChannelGroup], removed: dict[str, Sequence[int]],
               dtype: torch.dtype = torch.float32, device=None) -> list[torch.Tensor]:
    """Gates of value 1, with the removed channels of each group set to 0."""
    gates = []
    for g in groups:
        gate = torch.ones(g.size, dtype=dtype, device=device)
        idx = list(removed.get(g.name, ()))
        if idx:
            gate[idx] = 0
        gates.append(gate)
    return gates
