"""Channel groups (from torch-pruning's dependency graph) and the gates that switch structures off.

A *group* is a set of layers whose channels must be removed together; a *structure* is one channel
index of one group or, in a group that a grouped convolution reads or writes, one position within
every one of the convolution's groups (as torch-pruning prunes grouped convolutions: each keeps
equal, equally ordered groups). Groups come from ``torch_pruning.DependencyGraph`` so that no
architecture needs a hand-written table. Every producer of a group (a conv/linear whose output
channels belong to it) carries the group's gate: at the output of the BatchNorm that directly follows it, or at its own
output where no BatchNorm follows. Every other BatchNorm of the group acts on the channel after that
gate and maps a zero input to ``beta - gamma mu / sigma``, so it carries the same gate on its output
too (docs/method.md section 1). Setting a gate to 0 then zeroes the channel everywhere, which is exactly
what physical removal does. Layers for which no gate can do that (channel-mixing layers with
parameters, grouped convolutions whose grouping the group cannot follow, additive per-channel
parameters) are refused with :class:`UnsupportedModelError` naming the layer.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import UnsupportedModelError
from .utils import eval_mode


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
# Every BatchNorm, including subclasses such as timm's BatchNormAct2d (BN, then an activation).
BATCHNORM_BASE = nn.modules.batchnorm._BatchNorm
# Layers whose output channel i depends on input channel i only (or that carry no channel at all).
# Convs, linears and PReLU map a zeroed channel to zero (a bias belongs to the output channel, and a
# producer's output carries its own gate); a BatchNorm maps it to ``beta - gamma mu / sigma``, so every
# BatchNorm of a group carries the gate on its output. Anything else in a group with parameters
# (GroupNorm, attention, ...) would make gates and surgery disagree and is refused.
CHANNELWISE_TYPES = PRODUCER_TYPES + (BATCHNORM_BASE, nn.PReLU)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Ops through which an unwrapped per-channel parameter (e.g. ConvNeXt's layer scale ``gamma``) may
# reach the multiplication that applies it.
_RESHAPE_OPS = (tp.ops._ReshapeOp, tp.ops._ExpandOp)


class ChannelGroups(list):
    """The list of a model's groups, remembering the example input the graph was traced with."""

    def __init__(self, groups=(), example_input: torch.Tensor | None = None):
        super().__init__(groups)
        self.example_input = example_input


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable set of coupled channels.

    ``name`` is the first producer in module order (stable across runs and copies of the model).
    ``gated_modules`` are the modules whose whole output (its channels are exactly this group's, in
    order) is multiplied by the group's gate: each producer's gate site, and every BatchNorm of the
    group that has exactly the group's channels. ``normalized_modules`` are the normalisation layers
    that need a gate-aware hook instead of that plain product, and :func:`gates_applied` applies
    them: channel LayerNorms (gate-weighted statistics, :func:`gated_layer_norm`) and BatchNorms that
    read this group's channels among other channels (DenseNet's pre-activation BN reads a
    concatenation of many groups), whose output is multiplied by the gate on the group's channels
    only. ``gate_slices`` maps each such BatchNorm to ``(module channels, group channels)``: output
    channel ``module_channels[k]`` carries structure ``group_channels[k]``. Code that multiplies
    ``gated_modules`` by hand must handle ``normalized_modules`` through :func:`gates_applied`.

    ``size`` is the number of structures. A structure is one channel (structure ``s`` is channel
    ``s`` of every producer), except in a group that a grouped convolution reads or writes: there
    ``structure_channels[s]`` lists the producer channels that structure ``s`` removes together (the
    same position in every group of the convolution), every gate site is a BatchNorm in
    ``normalized_modules`` with a ``gate_slices`` entry that repeats each structure over its
    channels, and ``gated_modules`` is empty. :meth:`channel_indices` turns structures into the
    channels that surgery removes.
    """

    name: str
    size: int
    gated_modules: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    normalized_modules: tuple[str, ...] = ()
    gate_slices: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    structure_channels: tuple[tuple[int, ...], ...] = ()

    @property
    def num_channels(self) -> int:
        """Output channels of each producer (``size`` where every structure is one channel)."""
        return sum(map(len, self.structure_channels)) if self.structure_channels else self.size

    def channel_indices(self, structures: Iterable[int]) -> list[int]:
        """The producer channels (sorted) that removing ``structures`` of this group removes: what
        torch-pruning's surgery takes (``sosp.selection.remove_channels``)."""
        structures = list(structures)
        bad = [s for s in structures if not 0 <= s < self.size]
        if bad:
            raise IndexError(f"structures {bad} out of range for group {self.name!r} of {self.size} structures")
        if not self.structure_channels:
            return sorted(structures)
        return sorted(c for s in structures for c in self.structure_channels[s])

    def per_structure(self, per_channel: torch.Tensor) -> torch.Tensor:
        """Sum a ``(..., num_channels)`` tensor over each structure's channels: ``(..., size)`` (e.g.
        filter norms of the producers' output channels into one saliency per structure)."""
        if not self.structure_channels:
            return per_channel
        owner = torch.empty(self.num_channels, dtype=torch.long)
        for s, channels in enumerate(self.structure_channels):
            owner[list(channels)] = s
        shape = (*per_channel.shape[:-1], self.size)
        out = torch.zeros(shape, dtype=per_channel.dtype, device=per_channel.device)
        return out.index_add_(-1, owner.to(per_channel.device), per_channel)


def classifier_name(model: nn.Module, example_input: torch.Tensor) -> str:
    """The last conv/linear executed in a forward pass: its output units are the classes."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: order.append(n))
        for n, m in model.named_modules()
        if isinstance(m, PRODUCER_TYPES)
    ]
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
    with eval_mode(model):
        return model(x)


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    with eval_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def channel_groups(model: nn.Module, example_input: torch.Tensor, unprunable: Sequence[str] = ()) -> ChannelGroups:
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
    params = {p: n for n, p in model.named_parameters()}
    groups = []
    refused: dict[str, tuple[str, set[str]]] = {}  # grouped conv -> (why, producers of the groups it breaks)
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRODUCER_TYPES):
        group, convs = _describe(tp_group, graph, names, order, params)
        for name, why in convs:
            refused.setdefault(name, (why, set()))[1].update(group.producers)
        groups.append(group)
    if refused:
        _refuse_grouped_convs(refused, modules, order)
    groups.sort(key=lambda g: order[g.name])
    return ChannelGroups(groups, example_input=example_input[:1].detach())


def _describe(
    tp_group, graph: tp.DependencyGraph, names: dict, order: dict, params: dict
) -> tuple[ChannelGroup, list[tuple[str, str]]]:
    """The group, and ``(layer, why)`` for every grouped conv in it whose grouping the group's
    structures cannot follow (:func:`channel_groups` refuses those, naming them)."""
    producers, consumers, normalized = [], [], []
    sites: dict[str, nn.Module] = {}  # each producer's gate site
    batchnorms: dict[str, tuple[nn.Module, dict[int, int]]] = {}  # group channel -> BN channel
    grouped: list[tuple[str, nn.Module, dict[int, int], bool]] = []  # (name, conv, channels, output side)
    size = len(tp_group[0].idxs)
    root = names[tp_group[0].dep.target.module]
    for item in tp_group.items:
        module = item.dep.target.module
        if isinstance(module, nn.Parameter):
            _check_unwrapped_parameter(graph, module, params.get(module, "an unnamed parameter"), root)
            continue
        if not isinstance(module, nn.Module) or module not in names:
            continue  # functional ops (add, concat, ...) carry no parameters
        name = names[module]
        channels = dict(zip(_root_idxs(item), item.idxs))  # group channel -> module channel
        is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
        if _is_channel_layernorm(module):
            if not _whole_width(channels, size, module.normalized_shape[0]):
                raise UnsupportedModelError(
                    f"channel LayerNorm {name!r} normalises the channels of the group rooted at {root!r} "
                    "together with other channels; gates cannot remove them exactly, so this model is "
                    "not supported"
                )
            if name not in normalized:
                normalized.append(name)
            continue
        if not isinstance(module, CHANNELWISE_TYPES) and _has_channel_params(module):
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) mixes or rescales the channels of group "
                f"rooted at {root!r}; gates cannot remove its "
                "channels exactly, so this model is not supported"
            )
        if isinstance(module, BATCHNORM_BASE):
            batchnorms.setdefault(name, (module, {}))[1].update(channels)
            continue
        if isinstance(module, CONV_TYPES) and _is_grouped(module):
            grouped.append((name, module, channels, is_out))
        if not isinstance(module, PRODUCER_TYPES):
            continue
        if is_out:
            if list(item.idxs) != list(range(size)):
                raise UnsupportedModelError(f"producer {name!r} maps the group's channels out of order")
            producers.append(name)
            site = _gate_site(graph, module)
            sites[names[site]] = site
        elif name not in consumers:
            consumers.append(name)
    producers = sorted(set(producers), key=order.__getitem__)
    structure_of, refused = _grouped_structures(grouped, size, root)
    if structure_of is not None and not refused:
        refused = _refuse_unsliceable_sites(grouped, sites, normalized, root)
    if structure_of is not None and not refused:
        gated, normalized, slices, structure_channels = _grouped_gates(structure_of, sites, batchnorms, size)
    else:
        # Every BatchNorm that is not a producer's gate site acts on the channel after a gate: it
        # gets the gate on its output too, on its whole output where its channels are the group's,
        # else on the group's slice of it.
        gated = set(sites)
        slices = []
        structure_channels = ()
        for name, (module, channels) in batchnorms.items():
            if name in sites:
                continue
            if _whole_width(channels, size, module.num_features):
                gated.add(name)
            else:
                group_channels = tuple(sorted(channels))
                slices.append((name, tuple(channels[k] for k in group_channels), group_channels))
                normalized.append(name)
    slices.sort(key=lambda s: order[s[0]])
    group = ChannelGroup(
        name=producers[0],
        size=len(structure_channels) or size,
        gated_modules=tuple(sorted(gated, key=order.__getitem__)),
        producers=tuple(producers),
        consumers=tuple(sorted(consumers, key=order.__getitem__)),
        normalized_modules=tuple(sorted(normalized, key=order.__getitem__)),
        gate_slices=tuple(slices),
        structure_channels=structure_channels,
    )
    return group, refused


def _grouped_structures(
    grouped: list[tuple[str, nn.Module, dict[int, int], bool]], size: int, root: str
) -> tuple[list[int] | None, list[tuple[str, str]]]:
    """Which structure each channel of a group belongs to where grouped convs read or write it
    (``None`` where none does), and ``(conv, why)`` for each grouped conv the group cannot follow.

    A conv with ``G`` groups keeps ``G`` equal groups, in order, after surgery only if every one of
    its groups loses the channels at the same positions: torch-pruning's ``prune_in_channels``
    keeps the first group's surviving positions for all groups, and output channels are removed as
    rows of the weight. So the channels at one position ``p`` of every group of the conv (its channels
    ``p + k * width / G``) are removed together, and channels tied by several grouped convs of the
    group are one structure (union-find). This needs the conv's channels on that side to be exactly
    the group's (else a structure would reach into other groups), and a conv that torch-pruning does
    not take for depthwise (``groups == out_channels``: it would pair input channel ``i`` with output
    channel ``i``)."""
    if not grouped:
        return None, []
    parent = list(range(size))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    refused: list[tuple[str, str]] = []
    for name, conv, channels, is_out in grouped:
        side, width = ("output", conv.out_channels) if is_out else ("input", conv.in_channels)
        if conv.groups == conv.out_channels:
            why = (
                "torch-pruning takes a conv with groups == out_channels for depthwise and removes input "
                f"channel i with output channel i, but this one has {conv.in_channels} inputs"
            )
        elif len(channels) != width or sorted(channels.values()) != list(range(width)):
            why = (
                f"its {side} channels are only partly those of the group rooted at {root!r} "
                f"({len(set(channels.values()))} of {width}), and removing a position from every one of its "
                "groups would remove channels of other groups too"
            )
        else:
            block = width // conv.groups
            channel_of = {m: r for r, m in channels.items()}
            for position in range(block):
                first = find(channel_of[position])
                for k in range(1, conv.groups):
                    parent[find(channel_of[position + k * block])] = first
            continue
        if all(n != name for n, _ in refused):
            refused.append((name, why))
    if refused:
        return None, refused
    components: dict[int, int] = {}
    for r in range(size):  # structures numbered in the order of their first channel
        components.setdefault(find(r), len(components))
    return [components[find(r)] for r in range(size)], []


def _refuse_unsliceable_sites(grouped, sites: dict[str, nn.Module], normalized: list[str], root: str) -> list:
    """A structure that spans several channels reaches each channel through a ``gate_slices`` entry,
    which :func:`gates_applied` applies to BatchNorms only: a producer with no BatchNorm after it, or
    a channel LayerNorm (whose gate-weighted statistics take one gate per channel), cannot carry it."""
    bare = sorted(name for name, module in sites.items() if not isinstance(module, BATCHNORM_BASE))
    why = None
    if bare:
        why = (
            f"in the group rooted at {root!r} its structures span several channels, whose gates only a "
            f"BatchNorm can carry, and producer{'s' if len(bare) > 1 else ''} "
            f"{', '.join(repr(n) for n in bare)} of that group {'have' if len(bare) > 1 else 'has'} "
            "no BatchNorm after it"
        )
    elif normalized:
        why = (
            f"in the group rooted at {root!r} its structures span several channels, which the "
            f"gate-weighted statistics of channel LayerNorm {normalized[0]!r} cannot follow"
        )
    if why is None:
        return []
    return [(name, why) for name in dict.fromkeys(name for name, *_ in grouped)]


def _grouped_gates(structure_of: list[int], sites: dict[str, nn.Module], batchnorms: dict, size: int):
    """``(gated, normalized, gate_slices, structure_channels)`` of a group whose structures span
    several channels: every gate site and every other BatchNorm of the group (all BatchNorms, by
    :func:`_refuse_unsliceable_sites`) multiplies each of its channels by the gate of that channel's
    structure, a ``gate_slices`` entry ``(name, module channels, structure of each)``."""
    slices = []
    for name in set(sites) | set(batchnorms):
        channels = batchnorms[name][1] if name in batchnorms else {k: k for k in range(size)}
        group_channels = sorted(channels)
        slices.append(
            (name, tuple(channels[k] for k in group_channels), tuple(structure_of[k] for k in group_channels))
        )
    members: list[list[int]] = [[] for _ in range(max(structure_of) + 1)]
    for channel, structure in enumerate(structure_of):
        members[structure].append(channel)
    return set(), [name for name, *_ in slices], slices, tuple(tuple(m) for m in members)


def _refuse_grouped_convs(refused: dict[str, tuple[str, set[str]]], modules: dict, order: dict) -> None:
    """A conv with ``1 < groups`` that is not depthwise mixes the channels within each of its groups;
    its channels can only be removed at the same positions of every group (:func:`_grouped_structures`).
    Name every grouped conv that a group cannot prune so, with the reason, and every layer that must be
    declared unprunable so that no such group remains."""
    described = []
    for name in sorted(refused, key=order.__getitem__):
        conv = modules[name]
        described.append(
            f"{name!r} (groups={conv.groups}, {conv.in_channels} -> {conv.out_channels} channels): {refused[name][0]}"
        )
    declare = sorted(set().union(*(producers for _, producers in refused.values())), key=order.__getitem__)
    plural = len(refused) > 1
    raise UnsupportedModelError(
        f"grouped convolution{'s' if plural else ''} that {'are' if plural else 'is'} not depthwise and "
        f"cannot be pruned exactly: {'; '.join(described)}. Gates and surgery cannot agree there. Declare "
        f"{', '.join(repr(n) for n in declare)} unprunable (channel_groups(..., unprunable=[...]) or the "
        "model attribute sosp_unprunable), so that no group contains such a convolution"
    )


def _root_idxs(item) -> list[int]:
    return list(getattr(item, "root_idxs", None) or item.idxs)


def _whole_width(channels: dict[int, int], size: int, width: int) -> bool:
    """Whether a layer's channels are exactly the group's, channel ``k`` at position ``k``."""
    return width == size and channels == {k: k for k in range(size)}


def _is_grouped(conv: nn.Module) -> bool:
    """A conv with ``groups > 1`` that is not depthwise (``groups == in_channels == out_channels``)."""
    return conv.groups > 1 and not (conv.groups == conv.in_channels == conv.out_channels)


def _check_unwrapped_parameter(graph: tp.DependencyGraph, param: nn.Parameter, name: str, root: str) -> None:
    """A per-channel parameter outside any known layer (torch-pruning prunes it as an 'unwrapped
    parameter') must only multiply the channel, like ConvNeXt's layer scale: a product keeps a zeroed
    channel at zero, an additive offset would not, and no gate could follow it."""
    node = graph.module2node.get(param)
    frontier = list(node.outputs) if node is not None else []
    seen = set()
    ok = bool(frontier)
    while frontier and ok:
        nxt = frontier.pop()
        if id(nxt) in seen:
            continue
        seen.add(id(nxt))
        op = nxt.module
        if isinstance(op, _RESHAPE_OPS):
            frontier.extend(nxt.outputs)
        elif not (isinstance(op, tp.ops._ElementWiseOp) and str(op._grad_fn).startswith("Mul")):
            ok = False
    if not ok:
        raise UnsupportedModelError(
            f"parameter {name!r} acts on the channels of the group rooted at {root!r} other than by "
            "multiplication (e.g. an additive per-channel offset): a removed channel would not read zero "
            "after it, so gates cannot remove it exactly and this model is not supported"
        )


def _is_channel_layernorm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1


def _has_channel_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _gate_site(graph: tp.DependencyGraph, producer: nn.Module) -> nn.Module:
    """The BatchNorm right after ``producer`` if its output goes only there, else the producer.

    A BatchNorm subclass that does more after normalising (timm's ``BatchNormAct2d``: BN, then an
    activation) is traced as its batch-norm op followed by the module's own output; it still counts
    as right after the producer, and its gate multiplies the module's output (after the activation).
    """
    outputs = graph.module2node[producer].outputs
    if len(outputs) != 1:
        return producer
    nxt = outputs[0]
    if isinstance(nxt.module, BATCHNORM_BASE):
        return nxt.module
    if (
        isinstance(nxt.module, tp.ops._ElementWiseOp)
        and "BatchNorm" in str(nxt.module._grad_fn)
        and len(nxt.outputs) == 1
        and isinstance(nxt.outputs[0].module, BATCHNORM_BASE)
        and len(nxt.outputs[0].inputs) == 1
    ):
        return nxt.outputs[0].module
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
def gates_applied(
    model: nn.Module, groups: Sequence[ChannelGroup], gates: Sequence[torch.Tensor] | torch.Tensor
) -> Iterator[None]:
    """Multiply every gated module's output by its group's gate while the block runs.

    ``gated_modules`` get the plain product; ``normalized_modules`` their gate-aware hook: channel
    LayerNorms :func:`gated_layer_norm`, BatchNorms in ``gate_slices`` the gate on the group's
    channels of their output only.
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
                handles.append(
                    module.register_forward_hook(
                        lambda m, i, out, gate=gate, dim=dim: out * broadcast_gate(gate, out, dim)
                    )
                )
            slices = {name: (mod_idx, grp_idx) for name, mod_idx, grp_idx in group.gate_slices}
            for name in group.normalized_modules:
                module = modules[name]
                dim = channel_dim(module)
                if name in slices:
                    scatter = _scatter_matrix(group.size, module.num_features, *slices[name], gate)
                    handles.append(
                        module.register_forward_hook(
                            lambda m, i, out, gate=gate, dim=dim, scatter=scatter: (
                                out * broadcast_gate(1 + (gate - 1) @ scatter, out, dim)
                            )
                        )
                    )
                else:
                    handles.append(
                        module.register_forward_hook(
                            lambda m, i, out, gate=gate, dim=dim: gated_layer_norm(m, i[0], gate, dim)
                        )
                    )
        yield
    finally:
        for h in handles:
            h.remove()


def _scatter_matrix(size: int, width: int, module_channels, group_channels, like: torch.Tensor) -> torch.Tensor:
    """``P`` (``size x width``) with ``P[group_channels[k], module_channels[k]] = 1``: ``1 + (c - 1) P``
    is a layer-wide gate that is ``c`` on the group's channels and 1 elsewhere (differentiable in
    ``c``, for shared and per-sample gates alike)."""
    scatter = torch.zeros(size, width, dtype=like.dtype, device=like.device)
    scatter[list(group_channels), list(module_channels)] = 1
    return scatter


def zero_gates(
    groups: Sequence[ChannelGroup], removed: dict[str, Sequence[int]], dtype: torch.dtype = torch.float32, device=None
) -> list[torch.Tensor]:
    """Gates of value 1, with the removed channels of each group set to 0."""
    gates = []
    for g in groups:
        gate = torch.ones(g.size, dtype=dtype, device=device)
        idx = list(removed.get(g.name, ()))
        if idx:
            gate[idx] = 0
        gates.append(gate)
    return gates
