"""Training loop, determinism, resume and evaluation (sosp.train)."""

import math

import pytest
import torch
from torch import nn

from sosp import data, models
from sosp.errors import ConfigError, TrainingDivergedError
from sosp.train import DEFAULT_DIGITS_CONFIG, TrainConfig, evaluate, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP threads spin against other jobs and an
    epoch can take 20x longer; results are bit-identical for a fixed thread count either way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small():
    return data.load("digits", train_subset=256)


class Tiny(nn.Module):
    """Conv-BN-ReLU-dropout-linear: exercises BN running statistics and the dropout RNG on resume."""

    def __init__(self, out_value=None):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.2),
        )
        self.fc = nn.Linear(32, 10)
        self.out_value = out_value

    def forward(self, x):
        out = self.fc(self.features(x))
        return out if self.out_value is None else out * 0 + self.out_value


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Tiny(**kw)


CFG = TrainConfig(epochs=2, batch_size=32, lr=0.05)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_history_and_checkpoint(small, tmp_path):
    model = tiny()
    logged = []
    h = train(model, small, CFG, seed=0, checkpoint_dir=tmp_path, progress=False, log=logged.append)
    assert h["epoch"] == [1, 2] and len(h["train_loss"]) == len(h["val_top1"]) == len(h["seconds"]) == 2
    assert all(0 <= v <= 1 for v in h["val_top1"]) and h["lr"][0] == pytest.approx(0.05) and h["lr"][1] < 0.05
    assert [r["epoch"] for r in logged] == [1, 2]
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and set(state) >= {"model", "optimizer", "scheduler", "history"}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_same_seed_same_weights_other_seed_differs(small):
    a, b, c = tiny(), tiny(), tiny()
    for m, seed in ((a, 0), (b, 0), (c, 1)):
        train(m, small, CFG, seed=seed, progress=False)
    assert _same_weights(a, b) and not _same_weights(a, c)


def test_resume_after_interrupt_is_bit_identical(small, tmp_path):
    full = tiny()
    h_full = train(full, small, CFG, seed=3, checkpoint_dir=tmp_path / "full", progress=False)

    class Interrupt(Exception):
        pass

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny(), small, CFG, seed=3, checkpoint_dir=tmp_path / "cut", progress=False, log=stop_after_first)
    resumed = tiny(seed=99)  # a fresh process would build a differently initialised model: irrelevant
    h_res = train(resumed, small, CFG, seed=3, checkpoint_dir=tmp_path / "cut", progress=False)
    assert _same_weights(full, resumed)
    assert h_res["train_loss"] == h_full["train_loss"] and h_res["val_top1"] == h_full["val_top1"]
    # a finished run is not trained again
    again = tiny(seed=5)
    train(again, small, CFG, seed=3, checkpoint_dir=tmp_path / "cut", progress=False)
    assert _same_weights(full, again)


def test_resume_refuses_another_config(small, tmp_path):
    train(tiny(), small, TrainConfig(epochs=1, batch_size=32, lr=0.05), seed=0, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="last.pt"):
        train(tiny(), small, CFG, seed=0, checkpoint_dir=tmp_path, progress=False)


def test_resume_refuses_a_model_of_another_shape(small, tmp_path):
    one_epoch = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    train(tiny(), small, one_epoch, seed=0, checkpoint_dir=tmp_path, progress=False)
    other = tiny()
    other.fc = nn.Linear(32, 10, bias=False)
    with pytest.raises(ConfigError, match="another shape"):
        train(other, small, one_epoch, seed=0, checkpoint_dir=tmp_path, progress=False)


def test_step_schedule_and_warmup(small):
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.1, schedule="step", milestones=(0.5, 0.75))
    h = train(tiny(), small, cfg, seed=0, progress=False)
    assert h["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.1, warmup_epochs=1)
    h = train(tiny(), small, cfg, seed=0, progress=False)
    assert h["lr"][0] == pytest.approx(0.1 / 4) and h["lr"][1] == pytest.approx(0.1)  # 4 steps per epoch


@pytest.mark.parametrize("make, lr", [(lambda: tiny(out_value=math.nan), 0.05), (tiny, 1e10)])
def test_divergence_names_epoch_and_step(small, make, lr):
    with pytest.raises(TrainingDivergedError, match=r"loss became (nan|inf) at epoch 1, step \d+.*learning rate"):
        train(make(), small, TrainConfig(epochs=2, batch_size=32, lr=lr), seed=0, progress=False)
    with pytest.raises(TrainingDivergedError, match="epoch 1, step 1 "):
        train(tiny(out_value=math.inf), small, CFG, seed=0, progress=False)


def test_evaluate_fractions_and_mode(small):
    model = tiny()
    model.train()
    r = evaluate(model, small.test, batch_size=100)
    assert 0 <= r["top1"] <= r["top5"] <= 1 and r["loss"] > 0 and model.training
    empty = small.test.subset([])
    assert math.isnan(evaluate(model, empty)["top1"])


def test_config_from_dict():
    cfg = TrainConfig.from_dict({"epochs": 3, "batch_size": 8, "lr": 0.1, "milestones": [0.3]})
    assert cfg.milestones == (0.3,) and TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="'lr_decay'"):
        TrainConfig.from_dict({"epochs": 3, "batch_size": 8, "lr": 0.1, "lr_decay": 0.1})
    with pytest.raises(ConfigError, match="'lr'"):
        TrainConfig.from_dict({"epochs": 3, "batch_size": 8})
    assert TrainConfig.from_dict({"epochs": 3, "batch_size": 8, "lr": "1e-3"}).lr == 1e-3  # YAML 1.1 text
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        TrainConfig.from_dict({"epochs": "3", "batch_size": 8, "lr": 0.1})
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(epochs=3, batch_size=8, lr=0.1, schedule="linear")


@pytest.mark.slow
def test_resnet20_reaches_95_percent_on_digits():
    bundle = data.load("digits")
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, in_channels=1)
    train(model, bundle, DEFAULT_DIGITS_CONFIG, seed=0, progress=False)
    assert evaluate(model, bundle.test)["top1"] >= 0.95
