"""benchmarks/within_layer.py --quick on digits (a 2-epoch ResNet-8, about 15 s): the rows it writes
have the properties the study rests on."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import within_layer as wl  # noqa: E402
from sosp import runner, selection  # noqa: E402
from sosp.io import load_model, read_json  # noqa: E402
from sosp.structures import channel_groups  # noqa: E402

METHODS = ["sosp_h", "random"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("within_layer")
    torch.set_num_threads(1)
    argv = ["--quick", "--arch", "resnet8", "--width-methods", *METHODS, "--work-dir", str(work)]
    assert wl.main(argv) == 0
    (cache,) = (work / "rows").glob("resnet8_s0_*.json")
    (base,) = (work / "models").glob("resnet8_s0_*.pt")
    model, _ = load_model(base)
    rows = {(r["width_method"], r["choice"]): r for r in read_json(cache).values()}
    return work, model.eval(), rows


def removed(row) -> dict[str, list[int]]:
    return json.loads(row["removed"])


def test_outputs_and_every_row(study):
    work, _, rows = study
    for name in ("within_layer.csv", "within_layer.md", "within_layer.png", "within_layer.pdf"):
        assert (work / "quick" / name).stat().st_size > 0
    assert set(rows) == {(m, c) for m in METHODS for c in ["own", *wl.CHOICES]}
    for r in rows.values():
        assert 0 <= r["oneshot_top1"] <= 100 and 0 <= r["finetuned_top1"] <= 100
        assert r["finetuned_loss"] > 0 and r["macs"] > 0
    assert "Verdict" in (work / "quick" / "within_layer.md").read_text()


def test_widths_equal_across_rules(study):
    _, model, rows = study
    groups = channel_groups(model, torch.zeros(1, 1, 8, 8))
    for m in METHODS:
        widths = {c: json.loads(rows[(m, c)]["kept_per_group"]) for c in ["own", *wl.CHOICES]}
        assert all(w == widths["own"] for w in widths.values()), m
        for c in ["own", *wl.CHOICES]:  # and the removed sets really have those widths
            gone = removed(rows[(m, c)])
            assert {g.name: g.size - len(gone.get(g.name, ())) for g in groups} == widths["own"]
    # the rules do choose different channels (the study would be empty otherwise)
    assert len({json.dumps(removed(rows[("sosp_h", c)]), sort_keys=True) for c in wl.CHOICES}) >= 3


def test_bn_scale_keeps_largest_gamma(study):
    _, model, rows = study
    modules = dict(model.named_modules())
    groups = channel_groups(model, torch.zeros(1, 1, 8, 8))
    for m in METHODS:
        gone = removed(rows[(m, "bn_scale")])
        for g in groups:
            # the BN after each producer, by ResNet's naming: conv1 -> bn1, shortcut.0 -> shortcut.1
            norms = [modules[p.replace("conv", "bn") if "conv" in p else p[:-1] + "1"] for p in g.producers]
            assert all(isinstance(n, torch.nn.BatchNorm2d) for n in norms) and len(norms) == len(g.producers)
            gamma = sum(n.weight.detach().abs() for n in norms)
            out = sorted(gone.get(g.name, ()))
            kept = sorted(set(range(g.size)) - set(out))
            if out:
                assert gamma[out].max() <= gamma[kept].min(), (m, g.name)


def test_own_row_is_the_methods_selection(study):
    _, model, rows = study
    example = torch.zeros(1, 1, 8, 8)
    groups = channel_groups(model, example)
    # random reads no data: its global selection is reproducible here without the calibration set
    scores = runner.score("random", model, groups, [], seed=0)
    expected = selection.prune(model, groups, scores, ratio=0.7, min_fraction=0.1, example_input=example).removed
    assert removed(rows[("random", "own")]) == expected
    # SOSP-H's global selection is its own within-group choice at its own widths: one fine-tuning, copied
    assert removed(rows[("sosp_h", "sosp_h")]) == removed(rows[("sosp_h", "own")])
    assert rows[("sosp_h", "sosp_h")]["same_selection_as"] == "sosp_h|own"
    assert rows[("sosp_h", "sosp_h")]["finetuned_top1"] == rows[("sosp_h", "own")]["finetuned_top1"]
    assert rows[("sosp_h", "own")]["kept_overlap_with_own"] == 1.0


def test_choose_and_bn_scale_helpers():
    from toy_models import make

    model = make("resnet").float().eval()
    x = torch.zeros(1, 1, 8, 8)
    groups = channel_groups(model, x)
    scores = [torch.arange(g.size, dtype=torch.float64).flip(0) for g in groups]  # channel 0 scores highest
    widths = {g.name: max(1, g.size // 2) for g in groups}
    gone = wl.choose(groups, scores, widths)
    for g in groups:
        assert gone.get(g.name, []) == list(range(widths[g.name], g.size))
    assert [s.shape[0] for s in wl.bn_scale_scores(model, groups)] == [g.size for g in groups]
