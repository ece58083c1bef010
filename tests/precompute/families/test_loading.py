"""Models and the flags that depend on them are checked before any work: a model that would load but score
with noise, a damaged weights file, a --max-length the model cannot take and layer/head flags the model lacks
are refused in one line with exit code 2, before the summary pass writes anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from precompute.cli import main
from tests.tiny_models import build


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return build("bert", tmp_path_factory.mktemp("good"))


def variant(good: Path, folder: Path) -> Path:
    import shutil

    shutil.copytree(good, folder)
    return folder


def refused(dataset: Path, model: Path, tmp_path: Path, capsys, *extra: str) -> str:
    """Run the CLI; assert exit 2, one error line, and that no pass started (no part, no table). The error line."""
    capsys.readouterr()
    out = tmp_path / "out"
    code = main(["--dataset", str(dataset), "--model", str(model), "--out", str(out), "--cache", str(tmp_path / "cache"),
                 "--no-progress", *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1, err
    assert not list(out.rglob("*.parquet")), "work started before the check"
    return err[0]


def test_folder_without_tokenizer_files(tiny_dataset, good, tmp_path, capsys):
    model = variant(good, tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    assert "has no tokenizer files" in refused(tiny_dataset, model, tmp_path, capsys)


def test_weights_without_the_classifier(tiny_dataset, good, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    model = variant(good, tmp_path / "m")
    weights = {k: v for k, v in load_file(model / "model.safetensors").items() if not k.startswith("classifier.")}
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    line = refused(tiny_dataset, model, tmp_path, capsys)
    assert "lacks trained weights for classifier.bias, classifier.weight" in line


def test_base_model_with_a_config_without_architectures(tiny_dataset, good, tmp_path, capsys):
    from transformers import BertModel

    model = variant(good, tmp_path / "m")
    BertModel.from_pretrained(good).save_pretrained(model)  # the encoder only, no pooler-classifier head
    config = json.loads((model / "config.json").read_text())
    config.pop("architectures", None)
    (model / "config.json").write_text(json.dumps(config))
    assert "names no architecture" in refused(tiny_dataset, model, tmp_path, capsys)


def test_truncated_safetensors(tiny_dataset, good, tmp_path, capsys):
    model = variant(good, tmp_path / "m")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "truncated or damaged" in refused(tiny_dataset, model, tmp_path, capsys)


def test_tokenizer_of_another_model(tiny_dataset, good, tmp_path, capsys):
    from transformers import AutoTokenizer

    model = variant(good, tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.add_tokens(["zebra", "quokka"])  # ids past the model's embeddings
    tokenizer.save_pretrained(model)
    assert "but the model has 41 embeddings" in refused(tiny_dataset, model, tmp_path, capsys)


@pytest.mark.parametrize("kind, length, message", [
    ("bert", "4", "--max-length 4 cannot hold the longest query"),
    ("bert", "600", "--max-length 600 is more than the 514 positions"),
    ("roberta", "514", "--max-length 514 is more than the 513 positions"),  # positions start after the padding id
])
def test_max_length_the_model_cannot_take(kind, length, message, tiny_dataset, tmp_path, capsys):
    model = build(kind, tmp_path / "m")
    line = refused(tiny_dataset, model, tmp_path, capsys, "--max-length", length)
    assert message in line
    if length == "4":
        assert "pass --max-length" in line and "or more" in line


@pytest.mark.parametrize("flags, message", [
    (["--ablation-layers", "9-99"], "the model has layers 0-1"),
    (["--ablation-layers", "1-0"], "the range is reversed"),
    (["--ablations", "heads", "--ablation-heads", "99.99"], "the model has layers 0-1 and heads 0-3"),
])
def test_layer_and_head_flags_checked_before_any_pass(flags, message, tiny_dataset, good, tmp_path, capsys):
    assert message in refused(tiny_dataset, good, tmp_path, capsys, *flags)


def test_a_model_that_will_not_fit_is_refused_before_loading(tiny_dataset, good, tmp_path, capsys, monkeypatch):
    """The weights are counted on the meta device and compared with the device's free memory (here made tiny)."""
    from precompute import memory

    monkeypatch.setattr(memory, "free_bytes", lambda device: 1024)
    line = refused(tiny_dataset, good, tmp_path, capsys)
    assert "will not fit: its weights need" in line and "GB free" in line


def test_weight_count_equals_the_loaded_model(good):
    """An independent count: the parameters of the model as loaded (tied embeddings once)."""
    from precompute.families.loading import load

    lm = load(str(good))
    assert lm.footprint.weights == 4 * sum(p.numel() for p in lm.model.parameters())
    assert lm.footprint.fits and "GB in float32" in lm.footprint.describe()
