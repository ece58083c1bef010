"""Models and the flags that depend on them are checked before any work: a model that would load but score
with noise (or NaN), a damaged weights file or config, a tokenizer that is not the model's, a model that ships its
own code, a --max-length the model cannot take and flag values the model or the measures library cannot take are
refused in one line with exit code 2, before the summary pass writes anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.precompute.conftest import refused
from tests.tiny_models import build


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return build("bert", tmp_path_factory.mktemp("good"))


def variant(good: Path, folder: Path) -> Path:
    import shutil

    shutil.copytree(good, folder)
    return folder


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
    (["--ablation-layers", "1-0"], "the range is reversed"),  # refused by the flag check, before the model loads
    (["--ablations", "heads", "--ablation-heads", "99.99"], "the model has layers 0-1 and heads 0-3"),
])
def test_layer_and_head_flags_checked_before_any_pass(flags, message, tiny_dataset, good, tmp_path, capsys):
    assert message in refused(tiny_dataset, good, tmp_path, capsys, *flags)


@pytest.mark.parametrize("flags, message", [
    (["--ablations", "subspace", "--subspace-heads", "99.99"], "--subspace-heads 99.99: the model has layers 0-1 and heads 0-3"),
    (["--ablations", "subspace", "--subspace-k", "999"], "--subspace-k '999': a head has only 8 singular components"),
    (["--ablations", "subspace", "--subspace-ops", "scale=nan"], "--subspace-ops 'scale=nan': expected remove or scale="),
    (["--ablations", "subspace", "--subspace-ops", "scale=inf"], "--subspace-ops 'scale=inf'"),
    (["--ablations", "subspace", "--subspace-ops", "scale=1e309"], "--subspace-ops 'scale=1e309'"),
    (["--ablations", "subspace", "--subspace-ops", "invert"], "--subspace-ops 'invert'"),
    (["--subspace-ops", "remove,bogus"], "--subspace-ops 'bogus'"),  # checked whether or not the set is asked for
    (["--ablations", "none", "--ablation-components", "mlp@99:q/mean"],
     "--ablation-components 'mlp@99:q/mean' needs an ablation stage"),
    (["--ablation-components", "MLP@99:q/mean"], "--ablation-components 'MLP@99:q/mean': the model has layers 0-1"),
    (["--ablation-components", "mlp@0-x/zero"], "--ablation-components 'mlp@0-x/zero': expected all, a layer"),
    (["--measures", "nDCG@0"], "measure 'nDCG@0': the cutoff after @ must be a whole number of at least 1"),
    (["--measures", "nDCG@10,P@0"], "measure 'P@0'"),
    (["--measures", "nDCG@1.5"], "measure 'nDCG@1.5'"),
    (["--measures", 'nDCG(dcg="x")@10'], "cannot be computed: invalid param dcg='x'"),
])
def test_every_flag_value_is_checked_before_any_pass(flags, message, tiny_dataset, good, tmp_path, capsys):
    """Each value is quoted as typed; none reaches the summary pass (nDCG@0 made trec_eval abort the process after
    every scoring; the subspace flags failed after the summary pass or with a traceback)."""
    assert message in refused(tiny_dataset, good, tmp_path, capsys, *flags)


def test_subspace_interventions_on_a_rotary_model_are_refused_before_any_pass(tiny_dataset, tmp_path, capsys):
    from tests.tiny_families import build_family

    model = build_family("llama-cls", tmp_path / "llama")
    line = refused(tiny_dataset, model, tmp_path, capsys, "--ablations", "subspace", "--subspace-heads", "0.0")
    assert "QK-subspace interventions are defined where W_Q W_K^T is the whole content term" in line


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


# -- models that would load but score NaN, or read their input differently from training (issue 16) ---------------


def edit_weights(model: Path, **edits) -> Path:
    """Rewrite model.safetensors with ``edits``: weight name -> function changing the tensor in place."""
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    for name, edit in edits.items():
        edit(weights[name.replace("__", ".")])
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    return model


def edit_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def nan(t):
    t.fill_(float("nan"))


def one_inf(t):
    t[5, 3] = float("inf")


def one_nan(t):
    t[0, 0] = float("nan")


@pytest.mark.parametrize("weight, edit", [
    ("classifier.weight", nan),
    ("bert.embeddings.word_embeddings.weight", one_inf),
    ("bert.encoder.layer.1.attention.self.query.weight", one_nan),  # what the spectra read, too
])
def test_non_finite_weights_are_refused_before_any_pass(weight, edit, tiny_dataset, good, tmp_path, capsys):
    model = edit_weights(variant(good, tmp_path / "m"), **{weight.replace(".", "__"): edit})
    line = refused(tiny_dataset, model, tmp_path, capsys)
    assert f"its weight {weight} holds" in line and "NaN or infinite" in line


def test_a_model_whose_scores_overflow_is_refused_by_the_probe_batch(tiny_dataset, good, tmp_path, capsys):
    """Finite weights whose scores are not (float32 overflow): the probe batch scored before the pass catches it."""
    model = edit_weights(variant(good, tmp_path / "m"), classifier__weight=lambda t: t.fill_(3e38),
                         classifier__bias=lambda t: t.fill_(3.3e38))
    line = refused(tiny_dataset, model, tmp_path, capsys)
    assert "scores 8 of the first 8 pairs as NaN or infinite (pair 0:" in line


def test_an_unknown_tokenizer_class_is_refused(tiny_dataset, good, tmp_path, capsys):
    """transformers would fall back to a generic tokenizer (for MiniLM: one without token_type_ids)."""
    model = variant(good, tmp_path / "m")
    edit_json(model / "tokenizer_config.json", tokenizer_class="NoSuchTokenizer")
    assert "its tokenizer_class 'NoSuchTokenizer' is not a tokenizer transformers knows" in refused(
        tiny_dataset, model, tmp_path, capsys)


def test_a_tokenizer_without_the_models_token_types_is_refused(tiny_dataset, good, tmp_path, capsys):
    """A BERT model trained with two token types and a tokenizer that gives none: every document token would read
    as query."""
    model = variant(good, tmp_path / "m")
    edit_json(model / "tokenizer_config.json", model_input_names=["input_ids", "attention_mask"])
    line = refused(tiny_dataset, model, tmp_path, capsys)
    assert "its tokenizer gives no token_type_ids, but the model was trained with 2 token types" in line


EVIL = '''
import pathlib
pathlib.Path(__file__).with_name("ran").write_text("the model's own code ran")
from transformers import BertConfig, BertForSequenceClassification
class EvilConfig(BertConfig):
    model_type = "{model_type}"
class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig
'''


@pytest.mark.parametrize("model_type, where", [("evil", "config.json"), ("bert", "config.json"),
                                               ("bert", "tokenizer_config.json")])
def test_a_model_with_its_own_code_is_refused_without_running_it(model_type, where, tiny_dataset, good, tmp_path,
                                                                  capsys, monkeypatch):
    """auto_map names classes in the model folder: transformers would ask "Do you wish to run the custom code?"
    (an unknown model_type) or quietly load its own class instead (a known one). Neither: refused, nothing run."""
    import builtins

    model = variant(good, tmp_path / "m")
    (model / "evil.py").write_text(EVIL.format(model_type=model_type))
    edit_json(model / "config.json", model_type=model_type)
    auto_map = ({"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
                if where == "config.json" else {"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    edit_json(model / where, auto_map=auto_map)
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("transformers asked whether to run the model's code"))
    line = refused(tiny_dataset, model, tmp_path, capsys)
    assert f"its {where} names code of its own (auto_map: evil." in line and "refused by default: pass --trust-remote-code" in line
    assert not (model / "ran").exists()


@pytest.mark.parametrize("edit, message", [
    ({"num_hidden_layers": 0}, "has 0 attention layers of 4 heads"),
    ({"hidden_size": "abc"}, "transformers rejects its config.json (Validation error for field 'hidden_size'"),
    ({"id2label": "x"}, "transformers rejects its config.json"),
    ({"max_position_embeddings": 64}, "its checkpoint holds bert.embeddings.position_embeddings.weight in another shape"),
])
def test_a_config_transformers_rejects_is_bad_input_not_a_bug(edit, message, tiny_dataset, good, tmp_path, capsys):
    model = variant(good, tmp_path / "m")
    edit_json(model / "config.json", **edit)
    assert message in refused(tiny_dataset, model, tmp_path, capsys)


def test_an_unreadable_tokenizer_config_is_bad_input(tiny_dataset, good, tmp_path, capsys):
    """It is read before loading (for auto_map and tokenizer_class), so it must fail as cleanly as config.json."""
    model = variant(good, tmp_path / "m")
    (model / "tokenizer_config.json").write_text("{not json")
    assert "its tokenizer_config.json cannot be read (Expecting property name" in refused(tiny_dataset, model, tmp_path,
                                                                                         capsys)


def test_the_load_report_is_one_line(tiny_dataset, good, tmp_path, capfd):
    """transformers prints a 10-line table for weights the architecture does not use; the job says it in one line
    (and a refusal, here the missing classifier, stays the only line)."""
    from safetensors.torch import load_file, save_file

    from precompute.cli import main

    model = variant(good, tmp_path / "m")
    weights = load_file(model / "model.safetensors")
    weights["extra.weight"] = weights["classifier.bias"].clone()
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    capfd.readouterr()
    assert main(["--dataset", str(tiny_dataset), "--model", str(model), "--out", str(tmp_path / "out"), "--cache",
                 str(tmp_path / "cache"), "--no-progress", "--max-queries", "1", "--ablations", "none"]) == 0
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "UNEXPECTED" not in err, err
    assert [line for line in err.splitlines() if "extra.weight" in line] == [
        f"model {str(model)!r}: 1 weight(s) of its checkpoint are not used by BertForSequenceClassification "
        "(extra.weight); they are ignored"]
    del weights["classifier.weight"], weights["classifier.bias"]
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    assert "lacks trained weights for classifier.bias" in refused(tiny_dataset, model, tmp_path / "again", capfd)
