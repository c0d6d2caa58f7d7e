"""A third-party pruning method, as another package would ship it: one module and one entry-point line
(``filter_l2 = "sosp_example_plugin:filter_l2"`` in the group ``sosp.methods``). The tests give it
real package metadata (a ``.dist-info`` folder) and put it on the path; nothing in the suite names it."""

import torch

from sosp.registry import Option, method


@method("filter_l2", options=(Option("power", float, 2.0, "exponent of the filter norm"),))
def filter_l2(model, groups, batches, *, power):
    """Filter norms: the summed squared weights of every producer's output channel, to ``power / 2``."""
    modules = dict(model.named_modules())
    scores = []
    for group in groups:
        total = torch.zeros(group.size, dtype=torch.float64)
        for name in group.producers:
            weight = modules[name].weight.detach()
            total += weight.double().pow(2).reshape(weight.shape[0], -1).sum(1).cpu()
        scores.append(total.pow(power / 2))
    return scores
