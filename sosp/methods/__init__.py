"""SOSP itself: SOSP-H (:mod:`sosp.methods.sosp_h`, the main method) and SOSP-I (:mod:`sosp.methods.sosp_i`,
the pairwise reference), each a :class:`sosp.registry.Method` declared under the ``sosp.methods``
entry-point group of this suite's ``pyproject.toml``. The reimplemented competitors are in the
separate ``sosp_baselines`` package (``baselines/``), which this package never imports."""
