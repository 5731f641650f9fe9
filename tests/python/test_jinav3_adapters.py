"""LoRA task adapters of jina-embeddings-v3, applied natively, against PEFT.

transformers' ``JinaEmbeddingsV3Model`` holds the base model only; its task
adapters are PEFT LoRA adapters stored beside it (one directory per task, holding
adapter_config.json and adapter_model.safetensors). The oracle is PEFT itself:
the tiny random base model from test_native_jinav3 wrapped by ``get_peft_model``
with random (``init_lora_weights=False``) adapters, saved with
``PeftModel.save_pretrained``, and run with ``set_adapter``. PEFT names cannot
hold '.', so the adapter for task "retrieval.query" is stored as retrieval_query.
mpool applies the adapters unmerged (W x + scale B A x) on top of the one set of
base weights; ``embed(task=...)`` picks the prompt and the adapter together.
"""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

import mpool
from test_native_jinav3 import TASKS, TEXTS, build_v3, oracle_embeddings


# PEFT (0.21) reads transformers' deprecated is_gradient_checkpointing when it wraps a model.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "word_embeddings", "token_type_embeddings"]


def add_adapters(d, model, adapters):
    """Saves PEFT adapters {name: LoraConfig kwargs} under d/adapters; returns the PeftModel oracle."""
    import copy

    torch.manual_seed(7)
    base = copy.deepcopy(model)
    pm = None
    for name, kwargs in adapters.items():
        config = peft.LoraConfig(init_lora_weights=False, **kwargs)
        if pm is None:
            pm = peft.get_peft_model(base, config, adapter_name=name)
        else:
            pm.add_adapter(name, config)
    pm.save_pretrained(d / "adapters")
    return pm.eval()


def oracle(pm, fast, texts, adapter, prompt=""):
    batch = fast([prompt + t for t in texts], padding=True, truncation=True, max_length=126, return_tensors="pt")
    with torch.no_grad():
        if adapter is None:
            with pm.disable_adapter():
                states = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        else:
            pm.set_adapter(adapter)
            states = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    return ((states * mask).sum(1) / mask.sum(1)).numpy()


def rel_error(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_each_task_runs_its_own_adapter_and_prompt_like_peft(tmp_path):
    d, model, fast = build_v3(tmp_path, config_edits={"task_instructions": TASKS})
    pm = add_adapters(d, model, {
        "retrieval_query": dict(r=4, lora_alpha=8, target_modules=ALL_MODULES),
        # rsLoRA scaling, per-module rank and alpha, a subset of the modules.
        "text_matching": dict(r=2, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "v_proj", "fc2"],
                              rank_pattern={"fc2": 3}, alpha_pattern={"layers.1.self_attn.q_proj": 5}),
    })
    texts = TEXTS[:6]
    with mpool.Pool() as pool:
        pool.register("v3", d)
        cases = [
            ("retrieval.query", "retrieval_query", TASKS["retrieval.query"]),
            ("text-matching", "text_matching", ""),
            ("retrieval.passage", None, TASKS["retrieval.passage"]),  # no adapter stored: the base model
            (None, None, ""),
        ]
        for task, adapter, prompt in cases:
            ours = pool.embed("v3", texts, task=task) if task else pool.embed("v3", texts)
            ref = oracle(pm, fast, texts, adapter, prompt)
            assert rel_error(ours, ref) <= 1e-4, (task, rel_error(ours, ref))
        # The adapters change the result (else the test above proves nothing).
        plain = oracle(pm, fast, texts, None)
        assert rel_error(oracle(pm, fast, texts, "text_matching"), plain) > 1e-2
        assert rel_error(oracle(pm, fast, texts, "retrieval_query", ""), plain) > 1e-2


def test_concurrent_requests_of_different_tasks_never_share_an_adapter(tmp_path):
    d, model, fast = build_v3(tmp_path, config_edits={"task_instructions": TASKS})
    pm = add_adapters(d, model, {
        "retrieval_query": dict(r=4, lora_alpha=8, target_modules=ALL_MODULES),
        "separation": dict(r=4, lora_alpha=4, target_modules=["fc1", "o_proj"]),
    })
    tasks = ["retrieval.query", "separation", "classification"]
    adapters = {"retrieval.query": "retrieval_query", "separation": "separation", "classification": None}
    refs = {t: oracle(pm, fast, TEXTS[:3], adapters[t], TASKS[t]) for t in tasks}
    results, errors = [], []
    with mpool.Pool() as pool:
        pool.register("v3", d)

        def client(i):
            try:
                for k in range(6):
                    task = tasks[(i + k) % 3]
                    results.append((task, pool.embed("v3", TEXTS[:3], task=task)))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert len(results) == 36
    for task, ours in results:
        assert rel_error(ours, refs[task]) <= 1e-4, task


def test_a_task_that_only_names_an_adapter_selects_it_without_a_prompt(tmp_path):
    d, model, fast = build_v3(tmp_path)
    pm = add_adapters(d, model, {"legal": dict(r=4, lora_alpha=4, target_modules=["q_proj", "fc1"])})
    with mpool.Pool() as pool:
        pool.register("v3", d)
        ours = pool.embed("v3", TEXTS[:3], task="legal")
        assert rel_error(ours, oracle(pm, fast, TEXTS[:3], "legal")) <= 1e-4
        with pytest.raises(mpool.InvalidInput, match=r"unknown task 'medical'; this model's tasks: legal \(adapter\)"):
            pool.embed("v3", TEXTS[:3], task="medical")


def test_an_adapter_of_the_unused_pooler_changes_nothing_and_one_of_an_unknown_module_fails_naming_it(tmp_path):
    d, model, fast = build_v3(tmp_path)
    # JinaEmbeddingsV3Model's pooler.dense is off the embedding path: PEFT adapts it, and the embeddings agree.
    pm = add_adapters(d, model, {"odd": dict(r=2, lora_alpha=2, target_modules=["q_proj", "dense"])})
    with mpool.Pool() as pool:
        pool.register("v3", d)
        assert rel_error(pool.embed("v3", TEXTS[:3], task="odd"), oracle(pm, fast, TEXTS[:3], "odd")) <= 1e-4
    # A tensor for a module the encoder does not have.
    path = d / "adapters" / "odd" / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors["base_model.model.layers.0.self_attn.extra_proj.lora_A.weight"] = torch.zeros(2, 32)
    save_file(tensors, path)
    with mpool.Pool() as pool:
        pool.register("v3", d)
        with pytest.raises(mpool.PoolError,
                           match=r"LoRA adapter 'odd' .* has the tensor 'layers\.0\.self_attn\.extra_proj\.lora_A\.weight'"):
            pool.embed("v3", TEXTS[:2], task="odd")
        d2, _, _ = build_v3(tmp_path, name="healthy")
        pool.register("ok", d2)
        assert pool.embed("ok", ["still healthy"]).shape == (1, 32)


@pytest.mark.parametrize(
    "edits, match",
    [
        ({"use_dora": True}, r'adapter_config.json: "use_dora" is true: DoRA is not supported'),
        ({"peft_type": "IA3"}, r'adapter_config.json: "peft_type" is \'IA3\'; only LoRA'),
        ({"bias": "all"}, r'adapter_config.json: "bias" is \'all\''),
        ({"modules_to_save": ["pooler"]}, r'adapter_config.json: "modules_to_save" is set'),
        ({"rank_pattern": {"fc.*": 2}}, r"is a regular expression"),
        ({"r": 0}, r'adapter_config.json: "r" must be a positive rank'),
    ],
)
def test_adapter_configs_mpool_cannot_apply_exactly_are_refused_naming_the_key(tmp_path, edits, match):
    d, model, _ = build_v3(tmp_path)
    add_adapters(d, model, {"task1": dict(r=2, lora_alpha=2, target_modules=["q_proj"])})
    path = d / "adapters" / "task1" / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(edits)
    path.write_text(json.dumps(config))
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=match):
            pool.register("v3", d)


def test_an_adapter_whose_rank_disagrees_with_its_tensors_fails_naming_the_tensor(tmp_path):
    d, model, _ = build_v3(tmp_path)
    add_adapters(d, model, {"task1": dict(r=2, lora_alpha=2, target_modules=["q_proj"])})
    path = d / "adapters" / "task1" / "adapter_config.json"
    config = json.loads(path.read_text())
    config["r"] = 3
    path.write_text(json.dumps(config))
    with mpool.Pool() as pool:
        pool.register("v3", d)
        with pytest.raises(mpool.PoolError, match=r"layers\.0\.self_attn\.q_proj\.lora_A\.weight"):
            pool.embed("v3", TEXTS[:2], task="task1")


# --- jina's remote-code layout ----------------------------------------------------------
#
# jinaai/jina-embeddings-v3 as the hub has it: XLMRobertaFlashConfig (model_type
# "xlm-roberta", rotary positions with "rotary_emb_base"), weights under "roberta."
# saved through torch.nn.utils.parametrize (M.parametrizations.weight.original), and
# every task's LoRA factors stacked in M.parametrizations.weight.0.lora_A / lora_B.
# Its modeling code is remote (not in transformers), so the reference is written
# here from that published structure: for task t, a linear's weight becomes
# W + alpha/rank * B[t] @ A[t] (A: (tasks, rank, in), B: (tasks, out, rank)) and
# an embedding's E + alpha/rank * A[t] @ B[t] (A: (tasks, vocab, rank), B: (tasks,
# rank, dim)); those merged weights, loaded into transformers' JinaEmbeddingsV3Model
# (the same network under jina's tensor names), are the oracle.

PARAMETRIZED = re.compile(
    r"^(embeddings\.(word|token_type)_embeddings|encoder\.layers\.\d+\.(mixer\.Wqkv|mixer\.out_proj|mlp\.fc1|mlp\.fc2))"
    r"\.weight$"
)


def build_remote(tmp_path, rank=4, alpha=2.0, theta=20000.0, extra=None):
    """(remote-code directory, base directory, base tensors, {weight name: (A, B, is_embedding)}, tokenizer)."""
    d, _, fast = build_v3(tmp_path, theta=theta, name="base")
    base = load_file(d / "model.safetensors")
    gen = torch.Generator().manual_seed(11)
    tasks = len(TASKS)
    stored, lora = {}, {}
    for name, w in base.items():
        if not PARAMETRIZED.match(name):
            stored["roberta." + name] = w
            continue
        module = name[: -len(".weight")]
        embedding = module.startswith("embeddings.")
        if embedding:
            a = 0.3 * torch.randn(tasks, w.shape[0], rank, generator=gen)
            b = 0.3 * torch.randn(tasks, rank, w.shape[1], generator=gen)
        else:
            a = 0.3 * torch.randn(tasks, rank, w.shape[1], generator=gen)
            b = 0.3 * torch.randn(tasks, w.shape[0], rank, generator=gen)
        stored[f"roberta.{module}.parametrizations.weight.original"] = w
        stored[f"roberta.{module}.parametrizations.weight.0.lora_A"] = a
        stored[f"roberta.{module}.parametrizations.weight.0.lora_B"] = b
        lora[name] = (a, b, embedding)
    stored.update(extra or {})
    remote = tmp_path / "remote"
    remote.mkdir()
    save_file(stored, remote / "model.safetensors")
    for f in d.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, remote / f.name)
    config = json.loads((d / "config.json").read_text())
    config.pop("rope_parameters", None)
    impl = "jinaai/xlm-roberta-flash-implementation"
    config.update({
        "model_type": "xlm-roberta",
        "architectures": ["XLMRobertaLoRA"],
        "auto_map": {
            "AutoConfig": f"{impl}--configuration_xlm_roberta.XLMRobertaFlashConfig",
            "AutoModel": f"{impl}--modeling_lora.XLMRobertaLoRA",
        },
        "position_embedding_type": "rotary",
        "rotary_emb_base": theta,
        "lora_adaptations": list(TASKS),
        "task_instructions": TASKS,
        "lora_rank": rank,
        "lora_alpha": alpha,
        "load_trained_adapters": True,
        "use_flash_attn": True,
    })
    (remote / "config.json").write_text(json.dumps(config))
    return remote, d, base, lora, fast


def merged_reference(tmp_path, d, base, lora, task_index, rank, alpha):
    import transformers

    scale = alpha / rank
    merged = dict(base)
    for name, (a, b, embedding) in lora.items():
        delta = a[task_index] @ b[task_index] if embedding else b[task_index] @ a[task_index]
        merged[name] = base[name] + scale * delta
    out = tmp_path / f"merged-{task_index}"
    shutil.copytree(d, out)
    save_file(merged, out / "model.safetensors")
    return transformers.JinaEmbeddingsV3Model.from_pretrained(out).eval()


@pytest.mark.parametrize(("rank", "alpha", "theta"), [(4, 1.0, 20000.0), (2, 3.0, 50000.0)])
def test_the_hubs_remote_code_checkpoint_runs_each_tasks_stacked_adapter_like_merged_weights(
        tmp_path, rank, alpha, theta):
    remote, d, base, lora, fast = build_remote(tmp_path, rank=rank, alpha=alpha, theta=theta)
    texts = TEXTS[:5]
    with mpool.Pool() as pool:
        pool.register("hub", remote)
        for t, (task, prompt) in enumerate(TASKS.items()):
            ref = oracle_embeddings(merged_reference(tmp_path, d, base, lora, t, rank, alpha), fast, texts,
                                    normalize=False, prompt=prompt)
            ours = pool.embed("hub", texts, task=task)
            assert rel_error(ours, ref) <= 1e-4, (task, rel_error(ours, ref))
        # Without a task: the base weights, no adapter, no prompt (jina's encode without task=).
        import transformers

        plain = transformers.JinaEmbeddingsV3Model.from_pretrained(d).eval()
        ref = oracle_embeddings(plain, fast, texts, normalize=False)
        assert rel_error(pool.embed("hub", texts), ref) <= 1e-4
        assert rel_error(pool.embed("hub", texts, task="separation"), ref) > 1e-2  # the adapter matters


def test_stacked_lora_of_the_pooler_is_ignored_and_of_an_unknown_module_is_refused_naming_it(tmp_path):
    # jina's parametrization adapts every linear, the pooler's too: off the embedding path, it is ignored.
    pooler = {
        "roberta.pooler.dense.parametrizations.weight.original": torch.zeros(32, 32),
        "roberta.pooler.dense.parametrizations.weight.0.lora_A": torch.zeros(len(TASKS), 4, 32),
        "roberta.pooler.dense.parametrizations.weight.0.lora_B": torch.zeros(len(TASKS), 32, 4),
    }
    remote, *_ = build_remote(tmp_path / "a", extra=pooler)
    with mpool.Pool() as pool:
        pool.register("hub", remote)
        assert pool.embed("hub", TEXTS[:2], task="separation").shape == (2, 32)
    unknown = {"roberta.encoder.layers.0.mixer.extra.parametrizations.weight.0.lora_A": torch.zeros(len(TASKS), 4, 32)}
    remote, *_ = build_remote(tmp_path / "b", extra=unknown)
    with mpool.Pool() as pool:
        pool.register("hub", remote)
        with pytest.raises(mpool.PoolError,
                           match=r"roberta\.encoder\.layers\.0\.mixer\.extra\.parametrizations\.weight\.0\.lora_A"):
            pool.embed("hub", TEXTS[:2])


def test_peft_adapters_beside_a_remote_code_checkpoint_are_refused(tmp_path):
    remote, d, *_ = build_remote(tmp_path)
    (remote / "adapters" / "extra").mkdir(parents=True)
    (remote / "adapters" / "extra" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (remote / "adapters" / "extra" / "adapter_model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes())
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match="carries its task adapters itself"):
            pool.register("hub", remote)
