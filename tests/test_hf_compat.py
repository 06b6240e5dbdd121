"""Every supported layout against the library's own forward, on the same weights.

Each supported `model_type` is built offline from a tiny config (2-3 layers, hidden 32) that
turns its quirks on: sliding windows shorter than the inputs, Gemma's soft-capping, Phi-3's fused
projections, GPT-NeoX's partial rotary, ELECTRA's embedding projection, DeBERTa's relative
positions and convolution, grouped key/value heads. If a transformers release changes a layer
signature, the mask convention or a head, these fail first (models/hf_compat.py, hf_layouts.py).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from sortednet_cli.decode.engine import ExitDecoder
from sortednet_cli.errors import UserError
from sortednet_cli.models import build_from_arch, hf_compat
from sortednet_cli.models.hf_layouts import supported_types
from sortednet_cli.models.text_families import DecoderConfig, EncoderConfig, build_decoder, build_encoder
from sortednet_cli.models.transformer import SortedDecoder, TokenBatch, sorted_from_config
from sortednet_cli.sorted.submodel import SubModel

DECODERS = supported_types(causal=True)
ENCODERS = supported_types(causal=False)
VOCAB = 60
# Types whose attention runs fewer heads than the config names (hf_layouts: heads_cuttable).
HEADS_CUT = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt_neox", "bert", "roberta", "xlm-roberta", "electra", "distilbert"}


def tiny_config(model_type: str, attention: str = "eager"):
    from transformers import AutoConfig

    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=64, attn_implementation=attention)
    quirks = {
        "llama": dict(num_key_value_heads=2),
        "mistral": dict(num_key_value_heads=2, sliding_window=4),
        "qwen2": dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=1),
        "qwen3": dict(num_key_value_heads=2, head_dim=8),
        "olmo2": dict(num_key_value_heads=2),
        "gemma2": dict(num_key_value_heads=2, head_dim=8, sliding_window=4, final_logit_softcapping=3.0, attn_logit_softcapping=5.0,
                       query_pre_attn_scalar=8),
        "phi3": dict(num_key_value_heads=2, pad_token_id=None),
        "gpt2": dict(n_embd=32, n_layer=3, n_head=4, n_inner=48, n_positions=64),
        "gpt_neox": dict(rotary_pct=0.5, use_parallel_residual=True),
        "bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1),
        "roberta": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1),
        "xlm-roberta": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1),
        "electra": dict(embedding_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1),
        "distilbert": dict(dim=32, n_layers=3, n_heads=4, hidden_dim=48, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, pad_token_id=1),
        "deberta-v2": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1, relative_attention=True,
                           position_buckets=8, pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm",
                           share_att_key=True, conv_kernel_size=3, type_vocab_size=0),
    }[model_type]
    if model_type in ("gpt2", "distilbert"):
        common = dict(vocab_size=VOCAB, max_position_embeddings=64, attn_implementation=attention)
    config = AutoConfig.for_model(model_type, **common, **quirks)
    if model_type not in DECODERS:
        config.num_labels = 3
    return config


def build(model_type: str, sort_heads: bool = False, attention: str = "eager", **overrides):
    """The tiny model of a type, its config's `overrides` set after the quirks."""
    torch.manual_seed(0)
    config = tiny_config(model_type, attention)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = sorted_from_config(config, sort_heads)
    with torch.no_grad():  # biases and norm weights away from their defaults, so slicing errors show
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def batch_for(model) -> TokenBatch:
    if isinstance(model, SortedDecoder):
        return TokenBatch(torch.randint(0, VOCAB, (2, 10)))  # longer than the sliding windows
    ids = torch.randint(3, VOCAB, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padded rows must not change the real tokens' results
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    types = None
    if model.layout.token_types(model.config):
        types = torch.zeros_like(ids)
        types[:, 5:] = 1
    return TokenBatch(ids, mask, types)


def library_logits(hf, batch: TokenBatch) -> torch.Tensor:
    inputs = {"input_ids": batch.input_ids}
    if batch.attention_mask is not None:
        inputs["attention_mask"] = batch.attention_mask
    if batch.token_type_ids is not None:
        inputs["token_type_ids"] = batch.token_type_ids
    return hf(**inputs).logits



@pytest.mark.parametrize("model_type", DECODERS + ENCODERS)
def test_full_model_equals_the_library_forward(model_type):
    model = build(model_type)
    batch = batch_for(model)
    with torch.no_grad():
        theirs = library_logits(model.hf, batch)
        torch.testing.assert_close(model(batch), theirs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(batch, SubModel(1.0, (3,))), theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "gpt_neox", "bert", "distilbert"])
def test_full_model_equals_the_library_forward_with_sdpa(model_type):
    model = build(model_type, attention="sdpa")
    batch = batch_for(model)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), library_logits(model.hf, batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", DECODERS + ENCODERS)
def test_sub_models_equal_standalone_library_models(model_type):
    """Depth k with width w is the library model with k layers and that many FFN units (and,
    where the layout cuts heads, heads), on the same leading tensors; the extracted model is a
    plain library model of the same type (its own config, no sortednet code)."""
    sort_heads = model_type in HEADS_CUT
    model = build(model_type, sort_heads=sort_heads)
    batch = batch_for(model)
    for sub in (SubModel(1.0, (1,)), SubModel(1.0, (2,)), SubModel(0.25, (1,)), SubModel(0.5, (2,)), SubModel(0.75, (3,))):
        small = model.extract(sub)
        assert small.hf.config.model_type == model_type and small.hf.config.num_hidden_layers == sub.depth[0]
        assert small.layout.ffn(small.config) == model.units(sub.width)["ffn"]
        with torch.no_grad():
            torch.testing.assert_close(model(batch, sub), library_logits(small.hf, batch), rtol=1e-4, atol=1e-5)
        rebuilt = build_from_arch(model.sub_arch(sub))
        assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in small.parameters())


@pytest.mark.parametrize("model_type", sorted(set(DECODERS + ENCODERS) - HEADS_CUT))
def test_layouts_that_cannot_cut_heads_say_so(model_type):
    with pytest.raises(UserError, match="cannot run fewer heads"):
        build(model_type, sort_heads=True)


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gpt2", "gpt_neox", "distilbert", "deberta-v2"])
def test_narrow_width_trains_only_the_kept_units(model_type):
    model = build(model_type).train()
    model(batch_for(model), SubModel(0.5, (2,))).float().sum().backward()
    kept = model.units(0.5)["ffn"]
    grads = {name: p.grad for name, p in model.layers[0].named_parameters() if p.grad is not None}
    sliced = model.layout.slices(model.layers[0], model.config, model.units(1.0)["heads"], model.units(1.0)["kv_heads"], kept)
    assert sliced, "width 0.5 must cut FFN units"
    for name in sliced:  # every sliced tensor has gradient exactly where the sub-model reads it
        grad = grads[name]
        assert grad.abs().sum() > 0
        narrow = sliced[name]
        mask = torch.zeros_like(grad, dtype=torch.bool)
        rows = narrow.shape[0] if narrow.shape[0] != grad.shape[0] else grad.shape[0]
        cols = narrow.shape[1] if narrow.dim() > 1 and narrow.shape[1] != grad.shape[1] else (grad.shape[1] if grad.dim() > 1 else None)
        if name.endswith("gate_up_proj.weight"):  # fused [gate; up]: two row blocks
            full = grad.shape[0] // 2
            mask[:kept] = True
            mask[full:full + kept] = True
        elif cols is None:
            mask[:rows] = True
        else:
            mask[:rows, :cols] = True
        assert grad[~mask].abs().sum() == 0, name
    assert all(p.grad is None for p in model.layers[2].parameters())  # layer 3 did not run


@pytest.mark.parametrize("model_type", DECODERS)
def test_greedy_decoding_equals_the_library_generate_and_speculation_equals_greedy(model_type):
    model = build(model_type)
    prompt = [5, 17, 3, 9, 22, 41]
    decoder = ExitDecoder(model)
    ours = decoder.full(prompt, 20).tokens
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    assert ours == out[0, len(prompt):].tolist()
    for draft_exit, draft_len in ((1, 1), (1, "auto"), (2, 3), ("auto", "auto")):
        assert decoder.speculative(prompt, 20, draft_exit, draft_len).tokens == ours
    # Draft trees: 6 levels deep reach past the 4-position sliding windows.
    for draft_exit, draft_len, width in ((1, 3, 3), (2, 6, 2), ("auto", "auto", 3)):
        assert decoder.speculative(prompt, 20, draft_exit, draft_len, draft_width=width).tokens == ours
    assert len(decoder.early_exit(prompt, 20, threshold=0.9).tokens) == 20
    assert decoder.exit(prompt, 20, 1).tokens == ExitDecoder(model.extract(SubModel(1.0, (1,)))).full(prompt, 20).tokens


LEAN = ["llama", "mistral", "qwen2", "qwen3", "olmo2", "phi3", "gpt2", "gpt_neox"]  # RotaryDecoder.lean_model_types, GPT-2, NeoX
LEAN_VARIANTS = {  # the other branches of a lean step: (model_type, config overrides)
    "phi3 partial rotary": ("phi3", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}}),
    "gpt_neox sequential residual": ("gpt_neox", {"use_parallel_residual": False}),
}


LEAN_CASES = [f"{t} sdpa" for t in LEAN] + [f"{t} eager" for t in LEAN] + ["gemma2 eager"] + [f"{v} sdpa" for v in LEAN_VARIANTS]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", LEAN_CASES)
def test_lean_decoding_steps_equal_the_library_layers_to_the_bit(case, dtype):
    """Each layer's lean step (its forward inlined) gives the library layer's output and writes
    its keys and values, bit for bit: a 6-position prefill, one position, then 3 at once (the
    verifier's call), past the sliding windows; under the library's sdpa and eager attention
    (Gemma 2: eager, its soft-capping)."""
    name, attention = case.rsplit(" ", 1)
    model_type, overrides = LEAN_VARIANTS.get(name, (name, {}))
    model = build(model_type, attention=attention, **overrides).to(dtype)
    if "rope_parameters" in overrides:
        assert model.positions(torch.zeros(1, 1, 32), torch.zeros(1, 1, dtype=torch.long))[0].shape[-1] == 4  # of head_dim 8
    assert model.lean_decoding
    hidden = torch.randn(1, 10, 32, dtype=dtype)
    table = model.positions(hidden, torch.arange(10)[None])
    library_cache, lean_cache = hf_compat.LayerCache(3, 10), hf_compat.LayerCache(3, 10)
    with torch.inference_mode():
        for index in range(3):
            step = model.decode_step(index)
            for start, stop in ((0, 6), (6, 7), (7, 10)):
                mask = model.layer_mask(index, None, stop - start, stop, hidden)
                piece, rows = hidden[:, start:stop], model.slice_positions(table, start, stop - start)
                expected = model.run_layer(index, piece, mask, rows, library_cache)
                assert torch.equal(step(piece, mask, rows, lean_cache), expected)
            for ours, theirs in zip(lean_cache.filled(index), library_cache.filled(index)):
                assert torch.equal(ours, theirs)


@pytest.mark.parametrize("case", [f"{t} sdpa" for t in LEAN] + ["gemma2 eager", "llama eager"])
def test_lean_decoding_reproduces_the_library_generate(case):
    """Greedy decoding over the lean steps, the library's layers and the library's generate:
    the same tokens; speculation over the lean steps too."""
    model_type, attention = case.split()
    model = build(model_type, attention=attention)
    prompt = [5, 17, 3, 9, 22, 41]
    ours = ExitDecoder(model).full(prompt, 20).tokens
    assert ExitDecoder(model, library_layers=True).full(prompt, 20).tokens == ours
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    assert ours == out[0, len(prompt):].tolist()
    assert ExitDecoder(model).speculative(prompt, 20, 1, 3).tokens == ours


def test_a_layer_the_lean_steps_do_not_cover_decodes_through_the_library_layer():
    """GPT-2's reorder_and_upcast_attn (eager attention's other path) has no lean step; greedy
    decoding through its library layers still equals the library's generate."""
    model = build("gpt2", reorder_and_upcast_attn=True)
    assert not model.lean_decoding and build("gpt2").lean_decoding
    prompt = [5, 17, 3, 9]
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    assert ExitDecoder(model).full(prompt, 8).tokens == out[0, len(prompt):].tolist()


def test_a_lean_step_in_training_mode_is_the_library_layer_with_its_dropout():
    config = tiny_config("llama", "sdpa")
    config.attention_dropout = 0.5
    torch.manual_seed(0)
    model = sorted_from_config(config).train()
    hidden = torch.randn(1, 4, 32)
    table = model.positions(hidden, torch.arange(4)[None])
    mask = model.layer_mask(0, None, 4, 4, hidden)
    outputs = []
    for run in (model.decode_step(0), lambda *args: model.run_layer(0, *args)):
        torch.manual_seed(1)
        outputs.append(run(hidden, mask, table, hf_compat.LayerCache(3, 4)))
    assert torch.equal(*outputs)


@pytest.mark.parametrize("model_type", ["gpt2", "gemma2"])
def test_bench_decode_runs_on_every_layout(model_type):
    """Every row is lossless where it should be; where the library's own early-exit assistant
    cannot run (GPT-2), the bench says so instead of failing."""
    from sortednet_cli.decode.bench import bench_decode

    result = bench_decode(build(model_type), [[5, 17, 3, 9]], 8, [1, 2], [0.9], [(1, 2, 1, 0.0), (2, "auto", 1, 0.0), (1, 2, 2, 0.0), (1, 4, 1, 0.3)], [1, 2])
    assert all(row["identical"] for row in result["rows"] if "identical" in row)
    labels = [row["label"] for row in result["rows"]]
    if model_type == "gpt2":
        assert "transformers E=1" not in labels and "fails on gpt2" in result["library_unsupported"]
    else:
        assert "transformers E=2" in labels and result["library_unsupported"] is None


@pytest.mark.parametrize("model_type", DECODERS)
def test_decoding_cache_holds_the_full_forward_keys(model_type):
    """Feeding a sequence in two pieces through the layer cache gives the one-pass logits."""
    model = build(model_type)
    ids = torch.randint(0, VOCAB, (1, 9))
    cache = hf_compat.LayerCache(3)
    pieces = []
    with torch.no_grad():
        full = model(TokenBatch(ids))
        for start, stop in ((0, 6), (6, 9)):
            positions = torch.arange(start, stop)[None]
            hidden = model.embed(ids[:, start:stop], positions)
            table = model.positions(hidden, positions)
            for index in range(3):
                hidden = model.run_layer(index, hidden, model.layer_mask(index, None, stop - start, stop, hidden), table, cache)
            pieces.append(model.logits(hidden))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)
    assert [cache.length(i) for i in range(3)] == [9, 9, 9]
    cache.crop(2, 6)
    assert [cache.length(i) for i in range(3)] == [9, 9, 6]


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gpt2", "gpt_neox"])  # no sliding window: the library's cache keeps every key
def test_the_preallocated_cache_writes_in_place_and_holds_the_library_caches_keys(model_type):
    """Decoding's cache, preallocated to the generation, is written in place (every layer's buffer
    a slice of the one tensor allocated for all layers' prompt + new tokens, never regrown) and holds, after a speculative
    generation with roll-backs, the keys and values of the library's own cache after one forward
    over the same tokens."""
    from transformers import DynamicCache

    model = build(model_type)
    prompt = [5, 17, 3, 9, 22, 41]
    decoder = ExitDecoder(model)
    result = decoder.speculative(prompt, 20, 1, 4)
    assert result.stats["accepted"] < result.stats["drafted"]  # rejections rolled the cache back
    cache = decoder.cache
    assert cache.capacity == len(prompt) + 20
    ids = torch.tensor([prompt + result.tokens[:-1]])
    library = DynamicCache(config=model.config)
    with torch.no_grad():
        model.hf(input_ids=ids, cache=library, use_cache=True)
    for layer in range(3):
        keys, values = cache.filled(layer)
        batch, heads, length, head_dim = keys.shape
        assert length == ids.shape[1] and keys.untyped_storage().nbytes() == 3 * batch * heads * cache.capacity * head_dim * keys.element_size()
        assert keys.untyped_storage().data_ptr() == cache.filled(0)[0].untyped_storage().data_ptr()
        torch.testing.assert_close(keys, library.layers[layer].keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(values, library.layers[layer].values, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", DECODERS + ENCODERS)
def test_a_saved_pretrained_model_loads_bit_exactly_and_its_export_loads_with_the_auto_class(model_type, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model = build(model_type)
    model.hf.save_pretrained(tmp_path / "pretrained")
    causal = model_type in DECODERS
    if causal:
        loaded = build_decoder(OmegaConf.structured(DecoderConfig(pretrained=str(tmp_path / "pretrained"))), VOCAB)
    else:
        cfg = OmegaConf.structured(EncoderConfig(pretrained=str(tmp_path / "pretrained")))
        loaded = build_encoder(cfg, VOCAB, 3, 1, "single_label_classification")
    ours, theirs = model.hf.state_dict(), loaded.hf.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    sub = SubModel(0.5, (2,))
    small = model.extract(sub)
    small.hf.save_pretrained(tmp_path / "export")
    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    assert auto.__name__ == model.layout.auto_class
    exported = auto.from_pretrained(tmp_path / "export").eval()
    batch = batch_for(model)
    with torch.no_grad():
        torch.testing.assert_close(library_logits(exported, batch), model(batch, sub), rtol=1e-4, atol=1e-5)


def test_a_pretrained_directory_of_an_unsupported_type_is_one_line(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("opt", vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=16,
                                  word_embed_proj_dim=16, max_position_embeddings=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"'opt' is not a supported decoder \(supported: .*gpt2.*\); docs/architecture.md"):
        build_decoder(OmegaConf.structured(DecoderConfig(pretrained=str(tmp_path))), VOCAB)
    with pytest.raises(UserError, match="not a supported encoder"):
        build_encoder(OmegaConf.structured(EncoderConfig(arch="gpt2")), VOCAB, 2, 0, "single_label_classification")


def test_model_arch_must_match_the_pretrained_type(tmp_path):
    build("gpt2").hf.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="model.arch=qwen2, but .* holds a gpt2 model"):
        build_decoder(OmegaConf.structured(DecoderConfig(arch="qwen2", pretrained=str(tmp_path))), VOCAB)


def test_a_pretrained_vocabulary_smaller_than_the_tokenizers_is_one_line_for_both_families(tmp_path):
    """The one vocabulary check of a pretrained model, on the decoder and on the encoder family."""
    build("gpt2").hf.save_pretrained(tmp_path / "decoder")
    build("bert").hf.save_pretrained(tmp_path / "encoder")
    expected = rf"model.pretrained=.*: its vocabulary \({VOCAB}\) is smaller than its tokenizer's \({VOCAB + 1}\)$"
    with pytest.raises(UserError, match=expected):
        build_decoder(OmegaConf.structured(DecoderConfig(pretrained=str(tmp_path / "decoder"))), VOCAB + 1)
    with pytest.raises(UserError, match=expected):
        build_encoder(OmegaConf.structured(EncoderConfig(pretrained=str(tmp_path / "encoder"))), VOCAB + 1, 2, 0,
                      "single_label_classification")
    assert build_decoder(OmegaConf.structured(DecoderConfig(pretrained=str(tmp_path / "decoder"))), VOCAB).hf.config.vocab_size == VOCAB


def test_additive_mask_matches_padding_causality_and_windows():
    cpu = torch.device("cpu")
    padding = torch.tensor([[1, 1, 0]])
    mask = hf_compat.additive_mask(padding, 3, 3, torch.float32, cpu, causal=True)
    assert (mask[0, 0] == 0).tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert hf_compat.additive_mask(torch.ones(1, 3), 3, 3, torch.float32, cpu, causal=False) is None
    # Two new queries after five cached positions see everything up to themselves.
    decoding = hf_compat.additive_mask(None, 2, 7, torch.float32, cpu, causal=True)[0, 0] == 0
    assert decoding.sum(dim=1).tolist() == [6, 7]
    # A window of 3: each query sees itself and the two before it; one query within the window needs no mask.
    windowed = hf_compat.additive_mask(None, 2, 7, torch.float32, cpu, causal=True, window=3)[0, 0] == 0
    assert windowed.tolist() == [[False, False, False, True, True, True, False], [False, False, False, False, True, True, True]]
    assert hf_compat.additive_mask(None, 1, 3, torch.float32, cpu, causal=True, window=3) is None


@pytest.mark.parametrize("legacy", ["llama", "bert", "roberta"])
def test_architecture_names_written_before_the_families_merged_still_rebuild(legacy):
    """Checkpoints of the bert / roberta / llama families record those names as their arch."""
    model = build("llama" if legacy == "llama" else legacy)
    rebuilt = build_from_arch({**model.arch, "name": legacy})
    assert type(rebuilt) is type(model) and rebuilt.config.model_type == model.config.model_type
    rebuilt.load_state_dict(model.state_dict())
    batch = batch_for(model)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(batch), model(batch))


def test_the_lean_steps_bench_covers_every_decoder_type_with_the_same_tokens(tmp_path):
    """sweeps/lean_steps_bench.py on 2 x 32 models: a row per supported decoder type, each built
    from its scratch config (what model=decoder model.arch=... trains) with lean steps, whose
    greedy tokens equal the library layers'."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "LAYERS": "2", "HIDDEN": "32", "NEW": "6", "ROUNDS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "sweeps" / "lean_steps_bench.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "lean_steps_bench.json").read_text())["rows"]
    assert [row["model_type"] for row in rows] == supported_types(causal=True)
    assert all(row["lean_steps"] and row["same_tokens"] and row["speedup"] > 0 for row in rows)
