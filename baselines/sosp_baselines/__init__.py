"""The reimplemented competitors of SOSP, one module per method: magnitude (L1), Taylor (one-shot and
iterative), C-OBD, EigenDamage, the random control, and their shared Fisher/K-FAC and eigenbasis code.

Each method is a :class:`sosp.registry.Method` declared under the ``sosp.methods`` entry-point group
of the suite's ``pyproject.toml``, exactly as a third-party plug-in would be. The import name is
``sosp_baselines`` (not ``baselines``) because an unrelated ``baselines`` distribution exists on PyPI:
the two never shadow each other. Nothing in ``sosp`` imports this package.
"""
