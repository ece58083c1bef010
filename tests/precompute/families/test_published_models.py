"""Models as researchers publish them: a PEFT (LoRA) adapter on a base that has no head of its own (RankLLaMA), a
pinned --revision, code shipped with a model only on --trust-remote-code, and templates longer than the kernel probe
used to allow (Qwen3-Reranker's default, a 66-token MonoT5 prompt)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from precompute.checks import check_kernels
from precompute.config import JobConfig
from precompute.families.loading import ModelError, base_identity, load
from precompute.settings import identity_values
from tests.tiny_families import build_family
from tests.tiny_models import DOCS, QUERIES, build

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """(adapter folder, base folder, the unmerged PEFT model's logits, the merged model's logits) of a tiny LoRA SEQ_CLS
    adapter with its own trained head, on a base saved as a causal LM without any head (as Llama-2 is for RankLLaMA)."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("lora")
    trained = build_family("llama-cls", root / "trained")
    base = root / "base"
    shutil.copytree(trained, base)
    weights = load_file(base / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("score.")}, base / "model.safetensors",
              metadata={"format": "pt"})
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"], "num_labels": 2,
                                                  "id2label": None, "label2id": None}))

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(trained).eval()
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                  target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**adapter_config, "base_model_name_or_path": str(base)}))

    lm_tokens = load(str(trained), device="cpu", progress=False)
    batch = lm_tokens.encode(QUERIES, DOCS, MAX_LENGTH)
    with torch.no_grad():
        unmerged = peft_model(**batch.inputs).logits[:, 0]
        merged = peft_model.merge_and_unload()(**batch.inputs).logits[:, 0]
    return adapter, base, batch, unmerged, merged


def test_a_lora_adapter_scores_as_the_merged_model(lora):
    adapter, base, batch, unmerged, merged = lora
    lm = load(str(adapter), device="cpu", progress=False)
    assert lm.family.name == "decoder-classifier" and lm.config.num_labels == 1
    assert lm.describe()["adapter"]["base"] == str(base) and lm.describe()["adapter"]["task_type"] == "SEQ_CLS"
    with torch.no_grad():
        stored = lm.family.scores(lm, lm.encode(QUERIES, DOCS, MAX_LENGTH))
    torch.testing.assert_close(stored, merged, atol=1e-5, rtol=0)
    torch.testing.assert_close(stored, unmerged, atol=1e-5, rtol=0)  # merging changes nothing but the speed
    assert (stored - load(str(adapter), device="cpu", progress=False, base_model=str(base)).family.scores(
        lm, lm.encode(QUERIES, DOCS, MAX_LENGTH))).abs().max() < 1e-6


def test_the_base_of_an_adapter_is_in_the_identity_and_the_base_alone_is_refused(lora, tmp_path):
    adapter, base, *_ = lora
    assert base_identity(str(adapter)) == str(base.resolve())
    assert base_identity(str(adapter), base_model=str(base)) == str(base.resolve())
    assert base_identity(str(base)) is None
    assert identity_values(JobConfig(model=str(adapter), base_model=str(base)))["base_model"] == str(base)
    with pytest.raises(ModelError, match="lacks trained weights"):
        load(str(base), device="cpu", progress=False)
    with pytest.raises(ModelError, match="--base-model .* is for PEFT adapters"):
        load(str(base), device="cpu", progress=False, base_model=str(base))
    orphan = tmp_path / "orphan"
    shutil.copytree(adapter, orphan)
    config = json.loads((orphan / "adapter_config.json").read_text())
    (orphan / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(ModelError, match="names no base model .*--base-model"):
        load(str(orphan), device="cpu", progress=False)


def test_revision_is_in_the_identity_and_refused_for_a_local_folder(tmp_path):
    assert identity_values(JobConfig(model="org/reranker", revision="0123abc"))["revision"] == "0123abc"
    assert identity_values(JobConfig(model="org/reranker"))["revision"] is None
    folder = build("bert", tmp_path / "bert")
    with pytest.raises(ModelError, match="--revision v1 is for Hugging Face ids, but model .* is a local folder"):
        load(str(folder), device="cpu", progress=False, revision="v1")


CUSTOM_CODE = '''
from transformers import BertForSequenceClassification


class AtlasTestBert(BertForSequenceClassification):
    """A model class shipped in the model's own files."""
'''


def test_remote_code_runs_only_on_trust_remote_code(tmp_path):
    folder = build("bert", tmp_path / "custom")
    (folder / "modeling_atlas_test.py").write_text(CUSTOM_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_atlas_test.AtlasTestBert"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"names code of its own .*refused by default: pass --trust-remote-code") as err:
        load(str(folder), device="cpu", progress=False)
    assert "\n" not in str(err.value)
    lm = load(str(folder), device="cpu", progress=False, trust_remote_code=True)
    assert type(lm.model).__name__ == "AtlasTestBert" and lm.family.name == "bert"


def _template_tokens(lm) -> int:
    empty = lm.encode([""], [""], MAX_LENGTH)
    return int(empty.inputs["attention_mask"].sum())


def test_the_kernel_probe_runs_at_the_runs_max_length(tmp_path):
    """Qwen3-Reranker's default template and a 66-token MonoT5 prompt are longer than the 64 tokens the probe once
    used: probed at the run's --max-length, they run."""
    qwen = load(str(build_family("qwen3-yesno", tmp_path / "qwen")), device="cpu", progress=False)
    long_t5 = "Query: {query} " + " ".join(["document"] * 60) + " Document: {document} Relevant:"
    t5 = load(str(build_family("monot5", tmp_path / "t5")), device="cpu", progress=False, template=long_t5)
    for lm in (qwen, t5):
        assert _template_tokens(lm) >= 64
        with pytest.raises(ValueError, match="leaves no room"):  # what the probe at 64 tokens ran into
            lm.encode(["what is a query"], ["a short document about a query"], 64)
        check_kernels(lm, MAX_LENGTH)
        check_kernels(lm, 64)  # too short for any pair: the pairs check names the query, the probe still runs


@pytest.mark.parametrize("kind", ["qwen3-yesno", "llama-cls-pad-eos"])
def test_a_job_stores_the_models_own_score(kind, tiny_dataset, tmp_path):
    """A whole job (summary stage) at the default --max-length: Qwen3-Reranker's default template starts (the probe
    once refused it), and a pad == eos decoder classifier stores its own ``model(**inputs).logits``."""
    import pyarrow.parquet as pq

    from precompute.job import run

    folder = build_family(kind.removesuffix("-pad-eos"), tmp_path / "model", pad_is_eos=kind.endswith("pad-eos"))
    cfg = JobConfig(dataset=str(tiny_dataset), model=str(folder), out=tmp_path / "run", cache=tmp_path / "cache",
                    easy_negatives=1, max_queries=2, batch_size=4, progress=False, stages=("summaries",))
    stored = pq.read_table(run(cfg) / "pairs.parquet").to_pandas()
    lm = load(str(folder), device="cpu", progress=False)
    batch = lm.encode(list(stored["query"]), list(stored["doc"]), cfg.max_length)
    with torch.no_grad():
        if lm.settings.answer_ids is None:
            own = lm.model(**batch.inputs, use_cache=False).logits[:, 0]
        else:  # the answer tokens at each row's last attended token
            last = batch.inputs["attention_mask"].long().cumsum(-1).argmax(-1)
            logits = lm.model(**batch.inputs, use_cache=False).logits[torch.arange(len(last)), last]
            own = torch.log_softmax(logits[:, list(lm.settings.answer_ids)].float(), -1)[:, 0]
    torch.testing.assert_close(torch.tensor(stored["score"].to_numpy()), own.float(), atol=1e-5, rtol=0)
