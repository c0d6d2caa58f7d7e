"""Calibration diagnostics (``sosp.calibration``): the per-sample weights are the loss side of the
scores (checked against the explicit softmax Hessian), the effective number of samples and class
shares behave at their limits, an over-fitted model is flagged, and every data-reading method's run
records the diagnostics."""

import pytest
import torch
import torch.nn as nn
import toy_models

from sosp import calibration, runner


class FixedLogits(nn.Module):
    """A 'model' that returns the logits stored for each sample index (the input holds the index)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, x):
        return self.logits[x[:, 0].long()]


def test_weights_are_the_residual_and_softmax_hessian_norms():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    x = torch.arange(6, dtype=torch.float64)[:, None]
    weights = calibration.sample_weights(FixedLogits(logits), [(x[:4], y[:4]), (x[4:], y[4:])])
    p = logits.softmax(-1)
    residual = p - nn.functional.one_hot(y, 4)
    hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    torch.testing.assert_close(weights["gradient"], residual.norm(dim=-1))
    torch.testing.assert_close(weights["curvature"], hessian.flatten(1).norm(dim=-1))
    assert weights["labels"].tolist() == y.tolist() and weights["num_classes"] == 4


def test_effective_samples_and_class_shares_at_their_limits():
    assert calibration.effective_samples(torch.ones(50, dtype=torch.float64)) == pytest.approx(50)
    one = torch.zeros(50, dtype=torch.float64)
    one[3] = 1.0
    assert calibration.effective_samples(one) == pytest.approx(1)
    assert calibration.effective_samples(torch.zeros(5, dtype=torch.float64)) == 0.0
    shares = calibration.class_shares(torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([0, 0, 2]), 3)
    assert shares == pytest.approx([0.5, 0.0, 0.5])


def test_an_overfitted_model_is_flagged_and_an_uncertain_one_is_not():
    n, classes = 100, 4
    y = torch.arange(n) % classes
    x = torch.arange(n, dtype=torch.float64)[:, None]
    confident = torch.full((n, classes), -20.0, dtype=torch.float64)
    confident[torch.arange(n), y] = 20.0
    confident[:3] = 0.0  # three samples it does not fit: classes 0, 1, 2
    report = calibration.diagnose(FixedLogits(confident), [(x, y)])
    assert report["samples"] == n and report["effective_samples_gradient"] == pytest.approx(3, rel=1e-6)
    assert report["min_class_share_gradient"] < 1e-6  # class 3 carries nothing
    assert any("3.0 effective calibration samples" in w for w in report["warnings"])
    assert any("class(es) 3 carry less than" in w for w in report["warnings"])
    assert calibration.diagnose(FixedLogits(confident), [(x, y)], terms=())["warnings"] == []

    uncertain = calibration.diagnose(FixedLogits(torch.zeros(n, classes, dtype=torch.float64)), [(x, y)])
    assert uncertain["effective_samples_gradient"] == pytest.approx(n)
    assert uncertain["min_class_share_curvature"] == pytest.approx(1.0) and uncertain["warnings"] == []


@pytest.mark.parametrize("method, terms", [("sosp_h", ["gradient", "curvature"]), ("taylor", ["gradient"])])
def test_runs_of_data_reading_methods_record_the_diagnostics(method, terms):
    torch.manual_seed(0)
    model = toy_models.make("resnet", dtype=torch.float32)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 5, (12,))
    batches = iter([(x[:6], y[:6]), (x[6:], y[6:])])  # a one-shot iterator: run() reads it twice
    report = runner.run(method, model, batches, 0.3, example_input=x[:1], num_samples=10).report
    found = report["calibration"]
    assert found["samples"] == 10 and found["terms"] == terms
    assert 1 <= found["effective_samples_gradient"] <= 10 and len(found["class_shares_curvature"]) == 5
    assert report["saliency_seconds"] > 0
    assert runner.run("magnitude", model, [], 0.3, example_input=x[:1]).report["calibration"] is None
