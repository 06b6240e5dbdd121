"""The transformers compatibility module against the library's own forward, on the same weights.

If a transformers release changes a layer signature, the mask convention or a head, these fail
first (see models/hf_compat.py)."""

from __future__ import annotations

import pytest
import torch

from sortednet_cli.models import build_from_arch
from sortednet_cli.models import hf_compat
from sortednet_cli.models.transformer import SortedDecoder, TokenBatch, build_from_parts, library_classes
from sortednet_cli.sorted.submodel import SubModel

torch.manual_seed(0)


def tiny_config(family: str, **extra):
    config_class, _, _ = library_classes(family)
    common = dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48)
    if family == "llama":
        return config_class(**common, max_position_embeddings=32, **extra)
    return config_class(**common, max_position_embeddings=40, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=1, **extra)


def padded_batch(family: str) -> TokenBatch:
    ids = torch.randint(3, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padded rows must not change the real tokens' results
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    types = None
    if family == "bert":
        types = torch.zeros_like(ids)
        types[:, 5:] = 1
    return TokenBatch(ids, mask, types)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_full_encoder_equals_the_library_forward(family):
    model = build_from_parts(family, tiny_config(family), sort_heads=True).eval()
    batch = padded_batch(family)
    ours = model(batch)
    theirs = model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(batch, SubModel(1.0, (3,))), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_full_decoder_equals_the_library_forward(attention):
    model = build_from_parts("llama", tiny_config("llama", attn_implementation=attention), sort_heads=True).eval()
    ids = torch.randint(0, 50, (2, 12))
    torch.testing.assert_close(model(TokenBatch(ids)), model.hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_first_k_layers_equal_a_library_model_with_k_layers():
    """Depth k is the library model with num_hidden_layers = k on the same first layers."""
    model = build_from_parts("llama", tiny_config("llama"), sort_heads=False).eval()
    ids = torch.randint(0, 50, (2, 10))
    for k in (1, 2):
        small = model.extract(SubModel(1.0, (k,)))
        assert small.hf.config.num_hidden_layers == k
        torch.testing.assert_close(model(TokenBatch(ids), SubModel(1.0, (k,))), small.hf(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "llama"])
@pytest.mark.parametrize("sort_heads", [False, True])
def test_sliced_width_equals_the_extracted_library_model(family, sort_heads):
    """Views of the shared tensors give what a standalone model of the smaller sizes gives;
    the extracted model is a plain library model (its own config, no sortednet code)."""
    model = build_from_parts(family, tiny_config(family), sort_heads=sort_heads).eval()
    batch = padded_batch(family) if family != "llama" else TokenBatch(torch.randint(0, 50, (2, 10)))
    for sub in (SubModel(0.25, (1,)), SubModel(0.5, (2,)), SubModel(0.75, (3,))):
        small = model.extract(sub)
        expected = small.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids).logits if family != "llama" else small.hf(input_ids=batch.input_ids).logits
        torch.testing.assert_close(model(batch, sub), expected, rtol=1e-5, atol=1e-5)
        assert small.hf.config.intermediate_size == model.units(sub.width)["ffn"]
        rebuilt = build_from_arch(model.sub_arch(sub))
        assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in small.parameters())
    if sort_heads:  # cut heads are kept, zeroed: configs cannot hold fewer heads of the same size
        assert model.extract(SubModel(0.25, (1,))).hf.config.num_attention_heads == 4


def test_sliced_width_trains_the_shared_tensors():
    model = build_from_parts("bert", tiny_config("bert"), sort_heads=True)
    model(padded_batch("bert"), SubModel(0.5, (2,))).sum().backward()
    ffn = model.layers[0].intermediate.dense.weight.grad
    assert ffn[:24].abs().sum() > 0 and ffn[24:].abs().sum() == 0  # only the kept units learn
    query = model.layers[0].attention.self.query.weight.grad
    assert query[:16].abs().sum() > 0 and query[16:].abs().sum() == 0
    assert model.layers[2].intermediate.dense.weight.grad is None  # layer 3 did not run


def test_additive_mask_matches_padding_and_causality():
    padding = torch.tensor([[1, 1, 0]])
    mask = hf_compat.additive_mask(padding, 3, 3, torch.float32, torch.device("cpu"), causal=True)
    allowed = mask[0, 0] == 0
    assert allowed.tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert hf_compat.additive_mask(torch.ones(1, 3), 3, 3, torch.float32, torch.device("cpu"), causal=False) is None
    # Two new queries after five cached positions see everything up to themselves.
    decoding = hf_compat.additive_mask(None, 2, 7, torch.float32, torch.device("cpu"), causal=True)[0, 0] == 0
    assert decoding.sum(dim=1).tolist() == [6, 7]


def test_layer_cache_appends_and_crops_per_layer():
    model = build_from_parts("llama", tiny_config("llama"), sort_heads=False).eval()
    ids = torch.randint(0, 50, (1, 8))
    full = model.hf(input_ids=ids).logits
    cache = hf_compat.LayerCache(3)
    with torch.no_grad():
        pieces = []
        for start, stop in ((0, 5), (5, 8)):
            hidden = hf_compat.decoder_embed(model.hf, ids[:, start:stop])
            positions = torch.arange(start, stop)[None]
            pe = hf_compat.rotary(model.hf, hidden, positions)
            mask = hf_compat.additive_mask(None, stop - start, stop, hidden.dtype, hidden.device, causal=True)
            for layer in model.layers:
                hidden = hf_compat.run_decoder_layer(layer, hidden, mask, pe, cache)
            pieces.append(hf_compat.decoder_logits(model.hf, hidden))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert [cache.length(i) for i in range(3)] == [8, 8, 8]
    cache.crop(2, 6)
    assert [cache.length(i) for i in range(3)] == [8, 8, 6]


def test_decoder_is_the_family_class():
    model = build_from_parts("llama", tiny_config("llama"), sort_heads=False)
    assert isinstance(model, SortedDecoder) and model.depth_limits == (3,)
