"""Base models from weights instead of training (sosp.weights, `sosp weights`, `sosp base`, config
`base`), all offline: a checkpoint file in every accepted format, torchvision and timm weights by their
published names read from the library's own cache (a random model's state dict put where the loader
looks), never a download; the base model's outputs equal those of the state dict's model exactly;
weights that do not fit the architecture are one clear error naming the file; the base record says
where the weights came from; the workflow builds the named architectures from weights and trains the
rest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from sosp import io, models, weights
from sosp.cli import main
from sosp.errors import DataError

REPO = Path(__file__).resolve().parents[1]
TV_SPEC = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
TV_FILE = "resnet18-f37072fd.pth"  # the file name in the weights' URL (torch.hub's cache name)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to download fails the test: everything here must come from the cache."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.set_dir of another test must not leak
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def outputs(model: nn.Module, shape=(2, 3, 32, 32)) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


def random_model(arch: str, seed: int, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = models.create(arch, num_classes=num_classes, in_channels=in_channels)
    with torch.no_grad():  # BN statistics away from 0/1, so loading them is checked too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


# ---------------------------------------------------------------------------------------------------
# checkpoint files
# ---------------------------------------------------------------------------------------------------
def _write(kind: str, model: nn.Module, path: Path) -> None:
    state = model.state_dict()
    if kind == "state dict":
        torch.save(state, path)
    elif kind == "checkpoint['model']":  # as sosp's and torchvision's training scripts save them
        torch.save({"model": state, "epoch": 3, "args": {"lr": 0.1}}, path)
    elif kind == "checkpoint['state_dict']":  # DataParallel-prefixed keys
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif kind == "saved module":
        torch.save(model, path)
    elif kind == "sosp model file":
        io.save_model(path, model, {"arch": "resnet20"})


@pytest.mark.parametrize(
    "kind", ["state dict", "checkpoint['model']", "checkpoint['state_dict']", "saved module", "sosp model file"]
)
def test_file_weights_give_the_state_dicts_outputs(kind, tmp_path):
    reference = random_model("resnet20", seed=1)
    path = tmp_path / "weights.pt"
    _write(kind, reference, path)
    model, source = weights.load("resnet20", f"file:{path}", num_classes=10, in_channels=3)
    assert torch.equal(outputs(model), outputs(reference))
    assert source["kind"] == "file" and source["format"] == kind and source["name"] == str(path)
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not torch.equal(outputs(random_model("resnet20", seed=2)), outputs(reference))  # a real check


def test_weights_that_do_not_fit_are_one_error_naming_the_file(tmp_path, capsys):
    path = tmp_path / "resnet20.pt"
    torch.save(random_model("resnet20", seed=1).state_dict(), path)
    with pytest.raises(weights.WeightsMismatchError, match=rf"weights file {path} do not fit resnet32 .*missing") as e:
        weights.load("resnet32", f"file:{path}", num_classes=10)
    assert "layer1.3.conv1.weight" in str(e.value) and "more)" in str(e.value)  # the first keys, then a count
    with pytest.raises(
        weights.WeightsMismatchError, match=r"fc.weight \[10, 64\] in the file, \[100, 64\] in the model"
    ):
        weights.load("resnet20", f"file:{path}", num_classes=100)
    with pytest.raises(weights.WeightsMismatchError, match="unexpected key"):  # a VGG's keys in a ResNet
        torch.save(random_model("vgg11", seed=0).state_dict(), tmp_path / "vgg.pt")
        weights.load("resnet20", f"file:{tmp_path / 'vgg.pt'}", num_classes=10)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=f"cannot read weights file {tmp_path / 'junk.pt'}"):
        weights.load("resnet20", f"file:{tmp_path / 'junk.pt'}", num_classes=10)
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(DataError, match="holds no state dict"):
        weights.load("resnet20", f"file:{tmp_path / 'empty.pt'}", num_classes=10)
    with pytest.raises(DataError, match="weights file not found"):
        weights.load("resnet20", f"file:{tmp_path / 'none.pt'}", num_classes=10)

    # on the command line: exit code 2 and one line naming the file
    code = main(["base", "--arch", "resnet32", "--weights", f"file:{path}", "--dataset", "digits", "--quiet",
                 "--out", str(tmp_path / "b.pt"), "--record", str(tmp_path / "b.json")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"sosp: error: weights file {path} do not fit resnet32 with 10 classes")
    assert not (tmp_path / "b.pt").exists()


def test_spec_errors():
    for bad in ("resnet18", "foo:bar", "torchvision:resnet18", "file:"):
        with pytest.raises(weights.ConfigError, match="weights"):
            weights.parse(bad)
    with pytest.raises(weights.ConfigError, match="not weights of torchvision:resnet18; its weights: ResNet18_Weights"):
        weights.check("torchvision:resnet18", "torchvision:ResNet50_Weights.IMAGENET1K_V1")
    with pytest.raises(weights.ConfigError, match="unknown torchvision weights"):
        weights.check("torchvision:resnet18", "torchvision:ResNet18_Weights.NOPE")
    with pytest.raises(weights.ConfigError, match="need a torchvision:<name> architecture"):
        weights.check("resnet20", TV_SPEC)
    with pytest.raises(weights.ConfigError, match="weights of timm:resnet18, not of timm:resnet34"):
        weights.check("timm:resnet34", "timm:resnet18.a1_in1k")
    with pytest.raises(weights.ConfigError, match="no pretrained weights"):
        weights.check("timm:resnet18", "timm:resnet18.nope")


# ---------------------------------------------------------------------------------------------------
# published weights, from the libraries' caches
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["TORCH_HOME", "cache_dir"])
def test_torchvision_weights_by_name_from_torch_hubs_cache(where, tmp_path, monkeypatch):
    """The state dict of a random ResNet-18 where torch.hub looks for ResNet18_Weights.IMAGENET1K_V1
    ($TORCH_HOME/hub/checkpoints/<file name of the URL>, or <cache_dir>/hub/checkpoints/): the base
    model is torchvision's builder's, with exactly these weights; nothing is downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cache = tmp_path / "cache" if where == "cache_dir" else None
    folder = (cache or tmp_path / "torch_home") / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    reference = random_model("torchvision:resnet18", seed=3, num_classes=1000)
    torch.save(reference.state_dict(), folder / TV_FILE)

    with pytest.warns(UserWarning, match="does not start with the f37072fd"):  # not the published file
        model, source = weights.load("torchvision:resnet18", TV_SPEC, num_classes=1000, cache_dir=cache)
    assert torch.equal(outputs(model, (1, 3, 32, 32)), outputs(reference, (1, 3, 32, 32)))
    assert source["kind"] == "torchvision" and source["name"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert source["url"].endswith(TV_FILE) and source["file_name"] == TV_FILE
    assert source["sha256"] == hashlib.sha256((folder / TV_FILE).read_bytes()).hexdigest()
    assert source["hash_matches_url"] is False and source["published_metrics"]["ImageNet-1K"]["acc@1"] == 69.758
    assert torch.hub._hub_dir is None  # a cache_dir is used for the call only

    with pytest.warns(UserWarning):  # `sosp weights`: already cached, so only read and summarised
        code = main(["weights", "--weights", TV_SPEC, "--quiet", "--out", str(tmp_path / "fetched.json")]
                    + (["--weights-cache", str(cache)] if cache else []))  # fmt: skip
    assert code == 0 and json.loads((tmp_path / "fetched.json").read_text())[TV_SPEC]["sha256"] == source["sha256"]

    with pytest.raises(weights.WeightsMismatchError, match="classify 1000 classes; the data set has 10"):
        weights.load("torchvision:resnet18", TV_SPEC, num_classes=10, cache_dir=cache)
    with pytest.raises(weights.WeightsMismatchError, match="3 input channels; the data set has 1"):
        weights.load("torchvision:resnet18", TV_SPEC, num_classes=1000, in_channels=1, cache_dir=cache)


def test_published_weights_are_never_downloaded_by_load(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / TV_FILE
    with pytest.raises(
        DataError, match=rf"not in the cache \(expected {expected}\); fetch them once first: `sosp weights"
    ):
        weights.load("torchvision:resnet18", TV_SPEC, num_classes=1000)
    with pytest.raises(DataError, match="timm:resnet18.a1_in1k are not in the cache"):
        weights.load("timm:resnet18", "timm:resnet18.a1_in1k", num_classes=1000, cache_dir=tmp_path)


def test_timm_weights_by_name_from_the_hugging_face_cache(tmp_path):
    """The state dict of a random timm ResNet-18 in the Hugging Face cache layout under cache_dir/hub."""
    from safetensors.torch import save_file

    torch.manual_seed(4)
    reference = models.create("timm:resnet18", num_classes=1000)
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(reference.state_dict(), repo / "snapshots" / "0123abcd" / "model.safetensors")

    model, source = weights.load("timm:resnet18", "timm:resnet18.a1_in1k", num_classes=1000, cache_dir=tmp_path)
    assert torch.equal(outputs(model, (1, 3, 32, 32)), outputs(reference, (1, 3, 32, 32)))
    assert source["kind"] == "timm" and source["hf_hub_id"] == "timm/resnet18.a1_in1k"
    assert source["file_name"] == "model.safetensors" and len(source["sha256"]) == 64


# ---------------------------------------------------------------------------------------------------
# the command line and the workflow
# ---------------------------------------------------------------------------------------------------
def test_base_verb_writes_the_model_and_a_record_with_its_weights_source(tmp_path):
    reference = random_model("resnet20", seed=5, in_channels=1)  # digits: 1 channel, 10 classes
    path = tmp_path / "ckpt.pt"
    torch.save({"model": reference.state_dict(), "epoch": 7}, path)
    out, record_path = tmp_path / "base.pt", tmp_path / "base.json"
    code = main(["base", "--arch", "resnet20", "--weights", f"file:{path}", "--dataset", "digits", "--seed", "3",
                 "--tier", "t", "--quiet", "--out", str(out), "--record", str(record_path)])  # fmt: skip
    assert code == 0
    record = json.loads(record_path.read_text())
    assert record["stage"] == "base" and record["arch"] == "resnet20" and record["seed"] == 3 and record["tier"] == "t"
    assert 0.0 <= record["top1"] <= 1.0 and record["eval_split"] == "test" and record["params"] > 0
    source = record["details"]["weights_source"]
    assert source == {
        "spec": f"file:{path}",
        "kind": "file",
        "name": str(path),
        "file_name": "ckpt.pt",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "format": "checkpoint['model']",
    }
    model, meta = io.load_model(out)
    assert meta["weights_source"] == source and meta["record"]["stage"] == "base" and meta["arch"] == "resnet20"
    assert meta["data"]["name"] == "digits" and meta["input_shape"] == [1, 8, 8]
    assert torch.equal(outputs(model, (4, 1, 8, 8)), outputs(reference, (4, 1, 8, 8)))


def test_config_base_schema():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(default, schema)
    assert default["base"] == {"from": "weights", "weights": None, "cache_dir": None}  # trains, as before
    imagenet = yaml.safe_load((REPO / "config" / "imagenet.yaml").read_text())
    assert imagenet["base"]["weights"] == {
        "torchvision:resnet18": "torchvision:ResNet18_Weights.IMAGENET1K_V1",
        "torchvision:resnet50": "torchvision:ResNet50_Weights.IMAGENET1K_V1",
    }
    for arch, spec in imagenet["base"]["weights"].items():
        weights.check(arch, spec)
    for bad, named in [
        ({"weights": {"resnet20": "ResNet18_Weights.IMAGENET1K_V1"}}, "['base']['weights']['resnet20']"),
        ({"weights": {"resnet20": "torchvision:resnet18"}}, "['base']['weights']['resnet20']"),
        ({"from": "pretrained"}, "['base']['from']"),
        ({"weight": {}}, "'weight' was unexpected"),
    ]:
        with pytest.raises(WorkflowError) as info:
            validate({**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), "base": bad}, schema)
        assert named in str(info.value), bad


@pytest.mark.slow
def test_workflow_builds_archs_with_weights_from_them_and_trains_the_rest(tmp_path):
    """Default tier with resnet20 from a checkpoint file: rule base_weights builds it (one job per
    seed, the file as input, nothing fetched); vgg11 and the widened nets of the bottleneck study are
    trained, every later rule is as before; `from: scratch` trains everything again."""
    from test_workflow import copy_workflow, job_counts, merged_config, snakemake

    copy_workflow(tmp_path)
    torch.save(random_model("resnet20", seed=0, in_channels=1).state_dict(), tmp_path / "r20.pt")
    overlay = {"base": {"weights": {"resnet20": "file:r20.pt"}}}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(overlay))
    proc = snakemake(tmp_path, "--dry-run", "--cores", "1", "--configfile", "w.yaml", "-p")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    seeds = len(merged_config("config.yaml")["seeds"])
    counts = job_counts(proc.stdout)
    assert counts["base_weights"] == seeds and counts["train"] == seeds * 3  # vgg11 and the 2 widened resnet20s
    assert "fetch_weights" not in counts
    assert "sosp base --arch resnet20" in proc.stdout and "--weights file:r20.pt" in proc.stdout
    assert "input: r20.pt, work/default/data.json" in proc.stdout

    # from: scratch (here on the command line) trains every base model again; the rest of the plan is as is
    scratch = snakemake(
        tmp_path, "--dry-run", "--cores", "1", "--configfile", "w.yaml", "--config", "base={from: scratch}"
    )
    assert scratch.returncode == 0, scratch.stderr[-3000:]
    trained = job_counts(scratch.stdout)
    assert trained.pop("train") == counts.pop("train") + seeds and "base_weights" not in trained
    assert counts.pop("base_weights") == seeds and trained == counts

    (tmp_path / "w.yaml").write_text(yaml.safe_dump({"base": {"weights": {"resnet56": "file:r20.pt"}}}))
    bad = snakemake(tmp_path, "--dry-run", "--cores", "1", "--configfile", "w.yaml")
    assert (
        bad.returncode != 0
        and "invalid config: base.weights.resnet56: 'resnet56' is not one of archs" in bad.stdout + bad.stderr
    )
