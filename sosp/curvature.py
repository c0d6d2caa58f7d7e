"""Gate-space derivatives of the cross-entropy loss: gradient, curvature-vector products, Jacobians.

All functions evaluate the model in eval mode (BatchNorm on running statistics, so samples are
independent) with every gate at 1 and leave the model's parameters untouched. Notation follows
docs/method.md section 2: ``g = dL/dc``, ``J_n = df(x_n)/dc``, ``Lambda_n = diag(p_n) - p_n p_n^T``,
``G = mean_n J_n^T Lambda_n J_n``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F

from .structures import ChannelGroup, broadcast_gate, channel_dim, gates_applied, split_flat, total_structures
from .utils import eval_mode


@contextlib.contextmanager
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters: only the gates need gradients, which halves the backward."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


# Layers that are linear in their input (given frozen parameters, BN on running statistics): their
# tangent is the layer applied to the input tangent without bias. Propagating it by hand runs one
# conv for the tangent, where PyTorch's generic convolution JVP runs two (it also convolves the
# primal with a zero weight tangent) and eval-mode batch-norm's JVP recomputes the normalisation.
def _conv_tangent(module, t):
    return module._conv_forward(t, module.weight, None)


def _linear_tangent(module, t):
    return F.linear(t, module.weight)


def _batchnorm_tangent(module, t):
    scale = (
        module.weight / torch.sqrt(module.running_var + module.eps)
        if module.affine
        else torch.rsqrt(module.running_var + module.eps)
    )
    return t * scale.reshape([1, -1] + [1] * (t.dim() - 2))


LINEAR_TANGENTS = {
    nn.Conv1d: _conv_tangent,
    nn.Conv2d: _conv_tangent,
    nn.Conv3d: _conv_tangent,
    nn.Linear: _linear_tangent,
    nn.BatchNorm1d: _batchnorm_tangent,
    nn.BatchNorm2d: _batchnorm_tangent,
    nn.BatchNorm3d: _batchnorm_tangent,
}


@contextlib.contextmanager
def linear_tangents(model: nn.Module) -> Iterator[None]:
    """Inside a dual level: propagate tangents through conv/linear/eval-BN layers by hand."""
    handles = []
    pending: dict[nn.Module, torch.Tensor] = {}

    def strip(module, args):
        primal, tangent = fwAD.unpack_dual(args[0])
        if tangent is None:
            return None
        pending[module] = tangent
        return (primal,) + tuple(args[1:])

    def attach(module, args, out):
        tangent = pending.pop(module, None)
        if tangent is None:
            return None
        with torch.no_grad():  # tangents are values, never differentiated: keep them off the graph
            tangent = LINEAR_TANGENTS[type(module)](module, tangent)
        return fwAD.make_dual(out, tangent)

    for module in model.modules():
        if type(module) in LINEAR_TANGENTS and not (
            isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is None
        ):
            handles.append(module.register_forward_pre_hook(strip))
            handles.append(module.register_forward_hook(attach, prepend=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def unit_tangent_gates(model: nn.Module, groups: Sequence[ChannelGroup], gates: torch.Tensor) -> Iterator[None]:
    """Inside a dual level: gates (value 1, requiring grad) whose forward-mode tangent is all ones.

    Because the gate's value and tangent are both 1, the gated output's tangent is
    ``tangent + primal``, computed without autograd; only the primal ``out * c`` enters the graph
    that the reverse pass differentiates. Groups with channel LayerNorms need the gate inside the
    normalisation statistics and take the generic dual-gate path instead.
    """
    generic = [g.normalized_modules != () for g in groups]
    pieces = split_flat(gates, groups)
    tangent_ones = split_flat(fwAD.make_dual(gates, torch.ones_like(gates)), groups)
    modules = dict(model.named_modules())

    def fast(module, args, out, gate, dim):
        primal, tangent = fwAD.unpack_dual(out)
        with torch.no_grad():
            new_tangent = primal.clone() if tangent is None else tangent + primal  # own storage: in-place ops follow
        return fwAD.make_dual(primal * broadcast_gate(gate, primal, dim), new_tangent)

    handles = []
    try:
        fast_groups = [g for g, slow in zip(groups, generic) if not slow]
        fast_pieces = [p for p, slow in zip(pieces, generic) if not slow]
        for group, gate in zip(fast_groups, fast_pieces):
            for name in group.gated_modules:
                module = modules[name]
                handles.append(
                    module.register_forward_hook(
                        lambda m, i, out, gate=gate, dim=channel_dim(module): fast(m, i, out, gate, dim)
                    )
                )
        slow_groups = [g for g, slow in zip(groups, generic) if slow]
        slow_gates = [t for t, slow in zip(tangent_ones, generic) if slow]
        with gates_applied(model, slow_groups, slow_gates):
            yield
    finally:
        for h in handles:
            h.remove()


def _gate_dtype(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters())
    return p.dtype, p.device


def softmax_hessian_product(logits: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Lambda_n v_n = p_n * v_n - p_n (p_n . v_n)`` for every sample, without forming ``Lambda``."""
    p = logits.softmax(dim=-1)
    return p * v - p * (p * v).sum(dim=-1, keepdim=True)


Combination = tuple[float, float]
GRADIENT_AND_CURVATURE: tuple[Combination, ...] = ((1.0, 0.0), (0.0, 1.0))


def ggn_ones_combinations(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    x: torch.Tensor,
    y: torch.Tensor,
    combinations: Sequence[Combination] = GRADIENT_AND_CURVATURE,
) -> list[torch.Tensor]:
    """``a g + b G 1`` for every ``(a, b)``: one forward-mode JVP plus one reverse pass per combination.

    The JVP with all-ones gate tangent gives ``u_n = J_n 1`` together with the logits; then
    ``r_n = Lambda_n u_n`` (detached) makes ``d/dc (1/B) sum_n r_n . f_n = G 1``, and the loss gradient
    is the vector-Jacobian product with ``p_n - y_n``. Each combination is one cotangent on the same
    graph. A score that needs only one combination (e.g.
    ``|-g + 1/2 G 1|``) pays one reverse pass, not two.
    """
    dtype, device = _gate_dtype(model)
    gates = torch.ones(total_structures(groups), dtype=dtype, device=device, requires_grad=True)
    with scoring_mode(model):
        with fwAD.dual_level():
            with unit_tangent_gates(model, groups, gates), linear_tangents(model):
                logits, u = fwAD.unpack_dual(model(x))
            u = u.detach()
        # The reverse pass runs outside the dual level: inside it, every backward op would also
        # propagate tangents (double the cost, and unsupported for some ops such as silu_backward).
        p = logits.detach().softmax(dim=-1)
        r = softmax_hessian_product(logits.detach(), u.to(p.dtype))
        residual = p - F.one_hot(y, p.shape[-1]).to(p.dtype)  # d loss_n / d logits_n
        cotangents = torch.stack([(a * residual + b * r) / len(x) for a, b in combinations]).to(logits.dtype)
        # One reverse pass per combination on the retained graph (measured faster on CPU than
        # batching the cotangents with is_grads_batched, and it needs no extra activation memory).
        return [
            torch.autograd.grad(logits, gates, c, retain_graph=i < len(cotangents) - 1)[0]
            for i, c in enumerate(cotangents)
        ]


def hessian_ones_combinations(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    x: torch.Tensor,
    y: torch.Tensor,
    combinations: Sequence[Combination] = GRADIENT_AND_CURVATURE,
) -> list[torch.Tensor]:
    """``a g + b H 1`` with the exact Hessian of the loss w.r.t. the gates (double backward)."""
    dtype, device = _gate_dtype(model)
    gates = torch.ones(total_structures(groups), dtype=dtype, device=device, requires_grad=True)
    with scoring_mode(model), gates_applied(model, groups, gates):
        loss = F.cross_entropy(model(x), y)
        (g,) = torch.autograd.grad(loss, gates, create_graph=True)
        (h1,) = torch.autograd.grad(g.sum(), gates)
    g = g.detach()
    return [a * g + b * h1 for a, b in combinations]


def per_sample_jacobians(
    model: nn.Module, groups: Sequence[ChannelGroup], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``J`` of shape ``(B, C, S)`` and the logits: ``C`` reverse passes through per-sample gates.

    With a batch dimension on the gates, the gradient of ``sum_n f_{n,k}`` w.r.t. the gates is row
    ``k`` of every ``J_n`` at once, because samples are independent in eval mode.
    """
    dtype, device = _gate_dtype(model)
    gates = torch.ones(len(x), total_structures(groups), dtype=dtype, device=device, requires_grad=True)
    with scoring_mode(model), gates_applied(model, groups, gates):
        logits = model(x)
        rows = []
        num_classes = logits.shape[-1]
        for k in range(num_classes):
            (row,) = torch.autograd.grad(logits[:, k].sum(), gates, retain_graph=k < num_classes - 1)
            rows.append(row)
    return torch.stack(rows, dim=1), logits.detach()


def per_sample_gradients(
    model: nn.Module, groups: Sequence[ChannelGroup], x: torch.Tensor, labels
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample gate gradients of ``l(f_n, label)`` for ``K`` label columns: ``(K, B, S)``.

    ``labels`` is a ``(B,)`` or ``(B, K)`` tensor, or a function of the (detached) logits returning
    one, so that Monte-Carlo labels can be drawn from the model's own predictive distribution.
    """
    dtype, device = _gate_dtype(model)
    gates = torch.ones(len(x), total_structures(groups), dtype=dtype, device=device, requires_grad=True)
    with scoring_mode(model), gates_applied(model, groups, gates):
        logits = model(x)
        if callable(labels):
            labels = labels(logits.detach())
        labels = labels.reshape(len(x), -1)
        log_p = logits.log_softmax(dim=-1)
        grads = []
        for j in range(labels.shape[1]):
            nll = -log_p.gather(1, labels[:, j : j + 1]).sum()  # a sum: each sample keeps its own gradient
            (v,) = torch.autograd.grad(nll, gates, retain_graph=j < labels.shape[1] - 1)
            grads.append(v)
    return torch.stack(grads), logits.detach()


def gauss_newton_exact(jacobians: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``sum_n J_n^T Lambda_n J_n`` as ONE ``(B C) x S`` matrix product.

    ``Lambda_n = A_n A_n^T`` with ``A_n = diag(sqrt p) - p sqrt(p)^T`` (uses ``sum p = 1``), so
    ``J_n^T Lambda_n J_n = V_n^T V_n`` with ``V_n = sqrt(p_n) * (J_n - 1 p_n^T J_n)``.
    """
    p = logits.softmax(dim=-1).to(jacobians.dtype)
    centred = jacobians - torch.einsum("bc,bcs->bs", p, jacobians).unsqueeze(1)
    v = (p.sqrt().unsqueeze(-1) * centred).reshape(-1, jacobians.shape[-1])
    return v.T @ v


def loss_gradient_from_jacobians(jacobians: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sum_n J_n^T (p_n - onehot(y_n))``: the summed loss gradient, free once ``J`` is known."""
    p = logits.softmax(dim=-1).to(jacobians.dtype)
    residual = p - F.one_hot(y, p.shape[-1]).to(p.dtype)
    return torch.einsum("bc,bcs->s", residual, jacobians)
