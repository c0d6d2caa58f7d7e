"""Shared test settings: one intra-op thread per test worker (pytest-xdist runs one worker per core,
and oversubscribed threads slow small ops by orders of magnitude), offline model hubs."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

torch.set_num_threads(1)
