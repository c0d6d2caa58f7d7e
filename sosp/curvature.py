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
from torch.autograd.function import once_differentiable

from .structures import ChannelGroup, channel_dim, gates_applied, split_flat, total_structures
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


def _batchnorm_slope(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm's per-channel slope ``gamma / sqrt(var + eps)``, shaped to multiply ``like``."""
    slope = (
        module.weight / torch.sqrt(module.running_var + module.eps)
        if module.affine
        else torch.rsqrt(module.running_var + module.eps)
    )
    return slope.detach().reshape([1, -1] + [1] * (like.dim() - 2))


def _batchnorm_tangent(module, t):
    return t * _batchnorm_slope(module, t)


LINEAR_TANGENTS = {
    nn.Conv1d: _conv_tangent,
    nn.Conv2d: _conv_tangent,
    nn.Conv3d: _conv_tangent,
    nn.Linear: _linear_tangent,
    nn.BatchNorm1d: _batchnorm_tangent,
    nn.BatchNorm2d: _batchnorm_tangent,
    nn.BatchNorm3d: _batchnorm_tangent,
}
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters(recurse=False))


def _eval_batchnorm(module: nn.Module) -> bool:
    """A plain BatchNorm that is an affine map of its input: eval mode, running statistics."""
    return type(module) in BATCHNORMS and not module.training and module.running_var is not None


def _has_linear_tangent(module: nn.Module) -> bool:
    if type(module) not in LINEAR_TANGENTS:
        return False
    return _eval_batchnorm(module) if type(module) in BATCHNORMS else True


def _other_dims(t: torch.Tensor, dim: int) -> list[int]:
    dim %= t.dim()
    return [d for d in range(t.dim()) if d != dim]


class _UnitGate(torch.autograd.Function):
    """``out * c`` for a gate ``c`` of value exactly 1, i.e. a copy of ``out``.

    The backward passes the incoming gradient on as the gradient of ``out`` (``grad * 1``, not
    computed) and computes only ``dL/dc = sum(grad * out)`` over the non-channel dimensions. The
    forward returns new storage because in-place ops (``ReLU(inplace=True)``) may follow while ``out``
    is saved for the backward.
    """

    @staticmethod
    def forward(ctx, out, gate, dim):
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        grad_gate = (grad * out).sum(_other_dims(out, ctx.dim)) if ctx.needs_input_grad[1] else None
        return grad, grad_gate, None


class _GatedEvalBatchNorm(torch.autograd.Function):
    """A unit gate on a frozen eval-mode BatchNorm ``out = BN(x)`` (``out`` computed by the module).

    One node for both: ``dL/dx = grad * gamma / sqrt(var + eps)`` (eval-mode BN's own backward runs
    per-channel reductions for its parameter gradients whether or not they are needed, about four
    elementwise passes instead of one) and ``dL/dc = sum(grad * out)`` as in :class:`_UnitGate`.
    """

    @staticmethod
    def forward(ctx, x, gate, out, slope, dim):
        ctx.save_for_backward(out, slope)
        ctx.dim = dim
        return out.clone()

    @staticmethod
    @once_differentiable  # ``out`` is saved detached: no double backward (the Hessian path uses gates_applied)
    def backward(ctx, grad):
        out, slope = ctx.saved_tensors
        grad_x = grad * slope if ctx.needs_input_grad[0] else None
        grad_gate = (grad * out).sum(_other_dims(out, ctx.dim)) if ctx.needs_input_grad[1] else None
        return grad_x, grad_gate, None, None, None


def _fast_and_generic(groups: Sequence[ChannelGroup]) -> list[bool]:
    """Per group: whether its gates need the generic path (:func:`sosp.structures.gates_applied`):
    channel LayerNorms take the gate inside their statistics, sliced BatchNorms on part of a layer."""
    return [g.normalized_modules != () for g in groups]


@contextlib.contextmanager
def _unit_gate_hooks(
    model: nn.Module, groups: Sequence[ChannelGroup], gates: torch.Tensor, tangents: bool
) -> Iterator[None]:
    """The hooks behind :func:`unit_gates_applied` (``tangents=False``) and
    :func:`unit_tangent_forward` (``tangents=True``, inside a dual level): at most one pre-hook and
    one forward hook per module."""
    generic = _fast_and_generic(groups)
    pieces = split_flat(gates, groups)
    modules = dict(model.named_modules())
    gate_of: dict[nn.Module, tuple[torch.Tensor, int]] = {}
    for group, piece, slow in zip(groups, pieces, generic):
        if not slow:
            for name in group.gated_modules:
                gate_of[modules[name]] = (piece, channel_dim(modules[name]))
    pending: dict[nn.Module, torch.Tensor | None] = {}

    def strip(module, args):
        primal, tangent = fwAD.unpack_dual(args[0])
        pending[module] = tangent
        return None if tangent is None else (primal,) + tuple(args[1:])

    def attach(module, args, out):
        stripped = module in pending
        primal, tangent = (out, pending.pop(module)) if stripped else fwAD.unpack_dual(out)
        site = gate_of.get(module)
        if site is None:  # a linear layer that carries no gate: its tangent only
            if tangent is None:
                return None
            with torch.no_grad():  # tangents are values, never differentiated: keep them off the graph
                tangent = LINEAR_TANGENTS[type(module)](module, tangent)
            return fwAD.make_dual(primal, tangent)  # outside no_grad: keeps primal's graph
        gate, dim = site
        bn = _eval_batchnorm(module) and _frozen(module)
        if bn:  # the module's own graph is dropped; the gate node differentiates BN itself
            gated = _GatedEvalBatchNorm.apply(args[0], gate, primal.detach(), _batchnorm_slope(module, primal), dim)
        else:
            gated = _UnitGate.apply(primal, gate, dim)
        if not tangents:
            return gated
        # Gate value and tangent are both 1: the gated output's tangent is ``tangent + primal``.
        with torch.no_grad():
            if tangent is None:
                tangent = primal.clone()  # own storage: in-place ops follow
            elif not stripped:
                tangent = tangent + primal
            elif bn:
                tangent = torch.addcmul(primal, tangent, _batchnorm_slope(module, primal))
            else:
                tangent = LINEAR_TANGENTS[type(module)](module, tangent).add_(primal)
        return fwAD.make_dual(gated, tangent)

    handles = []
    try:
        for module in model.modules():
            linear = tangents and _has_linear_tangent(module)
            if linear:
                handles.append(module.register_forward_pre_hook(strip))
            if linear or module in gate_of:
                handles.append(module.register_forward_hook(attach, prepend=True))
        slow_groups = [g for g, slow in zip(groups, generic) if slow]
        slow_gates = [p for p, slow in zip(pieces, generic) if slow]
        if tangents:
            slow_gates = [fwAD.make_dual(p, torch.ones_like(p)) for p in slow_gates]
        with gates_applied(model, slow_groups, slow_gates):
            yield
    finally:
        for h in handles:
            h.remove()
        pending.clear()


def unit_gates_applied(model: nn.Module, groups: Sequence[ChannelGroup], gates: torch.Tensor):
    """:func:`sosp.structures.gates_applied` for one flat gate vector whose values are all exactly 1.

    The same forward values and gate gradients, cheaper: neither pass multiplies an activation by
    ones, and at a frozen eval-mode BatchNorm the gate's node also differentiates the BatchNorm
    (:class:`_GatedEvalBatchNorm`). Only for gates at 1 (the scoring point, docs/method.md section 1),
    shared by the batch, and first derivatives; other values, per-sample gates and double backward
    (:func:`hessian_ones_combinations`) go through ``gates_applied``.
    """
    return _unit_gate_hooks(model, groups, gates, tangents=False)


def unit_tangent_forward(model: nn.Module, groups: Sequence[ChannelGroup], gates: torch.Tensor):
    """Inside a dual level: :func:`unit_gates_applied` with every gate's forward-mode tangent at 1.

    Tangents go through conv/linear/eval-BN layers by hand (:data:`LINEAR_TANGENTS`, strip the input
    tangent before the layer, attach the output tangent after it) and through everything else by
    PyTorch's forward AD. At a gate site the gate's own contribution is added: value and tangent 1
    make the gated output's tangent ``tangent + primal``, one fused ``primal + slope * tangent`` at
    a gated eval BatchNorm. Only the primal enters the graph of the reverse pass. Groups with channel
    LayerNorms or sliced BatchNorms take dual gates through ``gates_applied``.
    """
    return _unit_gate_hooks(model, groups, gates, tangents=True)


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
            with unit_tangent_forward(model, groups, gates):
                logits, u = fwAD.unpack_dual(model(x))
            u = u.detach()
        # The reverse pass runs outside the dual level: inside it, every backward op would also
        # propagate tangents (double the cost, and unsupported for some ops such as silu_backward).
        p = logits.detach().softmax(dim=-1)
        r = softmax_hessian_product(logits.detach(), u.to(p.dtype))
        residual = p - F.one_hot(y, p.shape[-1]).to(p.dtype)  # d loss_n / d logits_n
        cotangents = torch.stack([(a * residual + b * r) / len(x) for a, b in combinations]).to(logits.dtype)
        # One reverse pass per combination on the retained graph: batching the cotangents into one
        # 2B-sample backward (is_grads_batched) does the same work and measured slower on CPU (a
        # 2B-sample conv backward falls out of cache), and needs more activation memory.
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
