"""Reimplemented competitors of SOSP behind the same interface (docs/method.md section 6).

Each module registers its methods on import: channel saliencies with ``sosp.saliency.register``
(``random``, ``magnitude``, ``taylor``, ``cobd``), whole pruning methods with their own surgery with
``sosp.prune.register_pruner`` (``taylor_iterative``, ``eigendamage``). ``sosp.saliency`` imports
them lazily, so nothing here needs importing by hand.
"""
