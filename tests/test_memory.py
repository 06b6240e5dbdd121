"""describe's memory estimate (engine/memory.py): the parameter counts exact against built
models and the closed form of the LLaMA layout, the strategies' arithmetic, and the activations
against torch's own count of the tensors saved for the backward."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from sortednet_cli.engine.memory import (TrainingPlan, estimate_memory, layer_activation_bytes_per_token, saved_activation_bytes,
                                        transient_activation_bytes)
from sortednet_cli.models import build_model, family_named
from sortednet_cli.sorted.submodel import SubModel
from sortednet_cli.tasks import build_task

from conftest import compose_config, run_cli, tiny_text_overrides

PLAN = TrainingPlan("single", 1, "fp32", gradient_checkpointing=False, cpu_offload=False, batch_size=4, seq_len=16)


def tiny(model: str, glue_root, text_path, *extra: str, task_too: bool = False):
    """The composed config, the memory shape and the full built model of a tiny Transformer (and its task)."""
    cfg = compose_config("describe", [*tiny_text_overrides(model, glue_root, text_path), *extra])
    task = build_task(cfg.data, cfg.model, torch.device("cpu"))
    fields = task.model_fields_without_data()
    built = cfg, family_named(cfg.model.name).memory_shape(cfg.model, **fields), build_model(cfg.model, fields)
    return (*built, task) if task_too else built


@pytest.mark.parametrize("model, extra", [("llama", []), ("bert", []), ("decoder", ["model.arch=gpt2"]), ("decoder", ["model.arch=qwen2", "model.kv_heads=1"])],
                         ids=["llama", "bert", "gpt2", "qwen2"])
def test_the_shape_counts_the_built_models_parameters_exactly(model, extra, glue_root, text_path):
    """Built on the meta device from the config alone, the counts are the built model's:
    biases, tied heads (GPT-2's, counted once) and grouped key/value heads included."""
    cfg, shape, built = tiny(model, glue_root, text_path, *extra)
    assert shape.parameters == sum(p.numel() for p in built.parameters())
    assert shape.layer_parameters == sum(p.numel() for p in built.layers[0].parameters())
    assert (shape.layers, shape.hidden, shape.ffn) == (cfg.model.layers, cfg.model.hidden, cfg.model.ffn)
    assert shape.outputs == (built.config.vocab_size if shape.causal else built.config.num_labels)


def llama_parameters(vocab: int, hidden: int, layers: int, ffn: int, kv_dim: int) -> int:
    """The LLaMA layout's closed form: embeddings and an untied head (2VH), per layer q and o
    (2H^2), k and v (2H * kv_dim), gate, up and down (3HF) and two RMSNorms (2H), the final norm (H)."""
    return 2 * vocab * hidden + layers * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * ffn + 2 * hidden) + hidden


def write_llama2_7b_config(directory):
    """Llama-2-7B's config.json as Meta published it, and a small tokenizer beside it (no weights)."""
    from transformers import LlamaConfig

    from sortednet_cli.tasks.text.tokenizers import train_byte_bpe

    LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2).save_pretrained(directory)
    train_byte_bpe(["a few words to train a tokenizer on"], 300, roberta=False).save_pretrained(directory)
    return directory


def test_the_parameter_count_is_the_llama_closed_form_small_and_at_7b(glue_root, text_path, tmp_path):
    _, shape, built = tiny("llama", glue_root, text_path)
    config = built.config
    assert shape.parameters == llama_parameters(config.vocab_size, 32, 2, 64, 32)
    cfg = compose_config("describe", ["model=decoder", f"model.pretrained={write_llama2_7b_config(tmp_path / 'llama2_7b')}"])
    shape = family_named("decoder").memory_shape(cfg.model, vocab_size=300)
    assert shape.parameters == llama_parameters(32000, 4096, 32, 11008, 4096) == 6_738_415_616  # Llama-2-7B's published count
    assert (shape.layers, shape.heads, shape.gated_ffn, shape.outputs) == (32, 32, True, 32000)


def test_the_strategies_share_out_parameters_gradients_and_optimizer_state(glue_root, text_path):
    _, shape, _ = tiny("llama", glue_root, text_path)
    P, Pl = shape.parameters, shape.layer_parameters
    single = estimate_memory(shape, PLAN)
    assert [single.of(name) for name in ("parameters", "gradients", "optimizer")] == [4 * P, 4 * P, 8 * P]
    ddp = estimate_memory(shape, dataclasses.replace(PLAN, strategy="ddp", world_size=8))
    assert ddp.of("gradient buckets") == 4 * P and ddp.of("activations") == single.of("activations")
    fsdp = {n: estimate_memory(shape, dataclasses.replace(PLAN, strategy="fsdp", world_size=n, precision="bf16")) for n in (1, 8)}
    for name, per_parameter in (("parameters", 4), ("gradients", 4), ("optimizer", 8)):
        assert fsdp[1].of(name) == per_parameter * P and fsdp[8].of(name) == per_parameter * P / 8
    Pr = P - shape.layers * Pl
    assert fsdp[8].of("gathered parameters") == 2 * (Pr + 2 * Pl) and fsdp[8].of("gathered gradients") == 2 * (Pr + Pl)
    offload = estimate_memory(shape, dataclasses.replace(PLAN, strategy="fsdp", world_size=8, precision="bf16", cpu_offload=True))
    assert offload.host_bytes == 16 * P / 8 and offload.device_bytes == fsdp[8].device_bytes - 16 * P / 8
    # autocast keeps a bf16 cast of every weight and the residual stream in float32
    mixed = estimate_memory(shape, dataclasses.replace(PLAN, precision="bf16"))
    assert mixed.of("weight casts") == 2 * P and mixed.of("parameters") == 4 * P


def test_checkpointing_keeps_only_the_layer_inputs(glue_root, text_path):
    _, shape, _ = tiny("llama", glue_root, text_path)
    plan = dataclasses.replace(PLAN, batch_size=8, seq_len=512, precision="bf16", strategy="fsdp")
    checkpointed = dataclasses.replace(plan, gradient_checkpointing=True)
    assert estimate_memory(shape, checkpointed).of("activations") < estimate_memory(shape, plan).of("activations")
    # saved: each layer's input (bf16) instead of its every saved tensor; the backward recomputes one layer
    tokens, layer = 8 * 512, layer_activation_bytes_per_token(shape, 2, 2)
    assert saved_activation_bytes(shape, plan) - saved_activation_bytes(shape, checkpointed) == shape.layers * tokens * (layer - 2 * shape.hidden)
    assert transient_activation_bytes(shape, checkpointed) - transient_activation_bytes(shape, plan) == tokens * layer


def measured_saved_bytes(model, inputs, exits: list[int], loss) -> int:
    """Bytes of the tensors autograd saves for the backward of one all-exits pass (every storage
    once, the parameters' left out), counted by torch.autograd.graph.saved_tensors_hooks."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        state = model.run_stem(inputs, 1.0)
        losses = []
        for index in range(max(exits)):
            state = model.run_block(0, index, state, 1.0)
            if index + 1 in exits:
                losses.append(loss(model.run_head(state, 1.0)))
        torch.stack(losses).mean().backward()
    return sum(storages.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16 autocast", "bf16 parameters"])
def test_the_saved_activations_are_within_a_tenth_of_torchs_count(precision, glue_root, text_path):
    """A tiny LLaMA, 4 sequences of 16 tokens, its last exit and then both: the tensors autograd
    really saves against the estimate's saved part (logit values and gradients are transient).
    fp32 and autocast are single's and ddp's (autocast's casts of the linear weights, which the
    estimate counts as weight casts, left out); bf16 parameters are fsdp's mixed precision."""
    from sortednet_cli.models.transformer import TokenBatch

    _, shape, model, task = tiny("llama", glue_root, text_path, "model.hidden=64", "model.heads=4", "model.ffn=128", task_too=True)
    ids = torch.randint(0, shape.outputs, (4, 16), generator=torch.Generator().manual_seed(0))
    inputs, targets = TokenBatch(ids, torch.ones_like(ids)), torch.roll(ids, -1, dims=1)
    plan = dataclasses.replace(PLAN, precision=precision[:4], strategy="fsdp" if precision == "bf16 parameters" else "single")
    casts = 0
    if precision == "bf16 parameters":
        model.to(torch.bfloat16)
    elif precision == "bf16 autocast":
        casts = 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16 autocast" else contextlib.nullcontext()
    for exits in ([2], [1, 2]):
        with autocast:
            measured = measured_saved_bytes(model, inputs, exits, lambda logits: task.loss(logits, targets)) - casts
        estimated = saved_activation_bytes(shape, dataclasses.replace(plan, exits=len(exits)))
        assert 0.9 < estimated / measured < 1.1, (exits, estimated, measured)


def test_describe_prints_the_estimate_and_writes_memory_json(glue_root, text_path, tmp_path, capsys):
    import json

    args = ["describe", *tiny_text_overrides("llama", glue_root, text_path), "pool=full", f"hydra.run.dir={tmp_path}", "memory.world_size=2",
            "trainer.strategy=fsdp", "trainer.precision=bf16", "trainer.gradient_checkpointing=true"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    written = json.loads((tmp_path / "memory.json").read_text())
    assert written["plan"] == {"strategy": "fsdp", "world_size": 2, "precision": "bf16", "gradient_checkpointing": True, "cpu_offload": False,
                               "batch_size": 16, "seq_len": 16, "exits": 1}  # trainer.batch_size 32 over 2 ranks; data.block_size
    assert "memory per rank" in out and f"{written['device_gib']:.2f} GiB on the device" in out


@pytest.mark.parametrize("bad, message", [
    (["memory.world_size=3"], "trainer.batch_size=32 (the global batch) must divide evenly over memory.world_size=3 ranks"),
    (["memory.world_size=2", "trainer.strategy=single"], "trainer.strategy=single runs one process, not memory.world_size=2"),
    (["trainer.fsdp_cpu_offload=true"], "trainer.fsdp_cpu_offload=true needs trainer.strategy=fsdp (got single)"),
])
def test_a_bad_memory_setting_is_one_line(bad, message, glue_root, text_path, tmp_path, capsys):
    code, _, err = run_cli(["describe", *tiny_text_overrides("llama", glue_root, text_path), *bad, f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_family_without_a_memory_shape_says_so(tmp_path, capsys):
    code, out, err = run_cli(["describe", "pool=full", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 0, err
    assert "memory per rank: not estimated for model=cpreresnet20" in out and not (tmp_path / "memory.json").exists()
    code, _, err = run_cli(["describe", "pool=full", "memory.only=true", f"hydra.run.dir={tmp_path}"], capsys)
    assert code == 2 and "memory.only=true: model=cpreresnet20 has no memory estimate" in err


def test_the_7b_experiment_fits_80_gb_per_gpu_on_8(tmp_path, capsys):
    """experiment=soft_llama7b as composed (fsdp, bf16, checkpointing, all seven exits), its model
    a Llama-2-7B config.json with no weights beside it, described with memory.only (no model
    built): under 80 GB per rank. The same model trained on one GPU in plain float32 needs more
    than that for its parameters, gradients and AdamW's states alone."""
    import json

    from sortednet_cli.engine.describe import describe_memory

    overrides = ["experiment=soft_llama7b", f"model.pretrained={write_llama2_7b_config(tmp_path / 'llama2_7b')}",
                 f"data.path={tmp_path / 'no_such.jsonl'}"]
    code, out, err = run_cli(["describe", *overrides, "memory.world_size=8", "memory.only=true", f"hydra.run.dir={tmp_path / 'out'}"], capsys)
    assert code == 0, err
    written = json.loads((tmp_path / "out" / "memory.json").read_text())
    assert written["parameters"] == 6_738_415_616 and not (tmp_path / "out" / "pool.csv").exists()
    assert written["plan"] == {"strategy": "fsdp", "world_size": 8, "precision": "bf16", "gradient_checkpointing": True, "cpu_offload": False,
                               "batch_size": 4, "seq_len": 512, "exits": 7}
    assert written["device_bytes"] < 80e9
    alone = describe_memory(compose_config("describe", [*overrides, "trainer.strategy=single", "trainer.precision=fp32",
                                                        "trainer.gradient_checkpointing=false", "trainer.batch_size=4"]))
    assert alone.of("parameters") + alone.of("gradients") + alone.of("optimizer") > 80e9
    assert not (tmp_path / "no_such.jsonl").exists()
