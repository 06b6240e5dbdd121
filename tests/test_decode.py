"""Decoding with exits on a tiny Sorted LLaMA trained here on Tiny Shakespeare characters.

Self-speculation must reproduce full greedy token for token, the cached exit path must equal a
recomputation from scratch, and the keys/values that early exit fills late must equal a full
forward's."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from sortednet_cli.decode import ExitDecoder, library_assistant_early_exit, library_greedy, teacher_forced_agreement
from sortednet_cli.decode.engine import DecodeCosts, Generation, choose_draft, expected_tokens
from sortednet_cli.decode.bench import bench_decode, plot_decode
from sortednet_cli.errors import UserError
from sortednet_cli.models import hf_compat
from sortednet_cli.models.transformer import TokenBatch, sorted_from_config
from sortednet_cli.sorted.submodel import SubModel

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"
FALLBACK_TEXT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.

All:
We know't, we know't.

First Citizen:
Let us kill him, and we'll have corn at our own price.
Is't a verdict?

All:
No more talking on't; let it be done: away, away!
"""
LAYERS, CONTEXT, BLOCK, STEPS = 4, 256, 64, 250
PROMPTS = ["ROMEO:\nWhat ", "First Citizen:\nWe are ", "\n\nKING"]
LENGTHS = (1, 7, 40, 100)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors this small gain nothing from a second thread, and two threads that share two
    cores with other work spin-wait: a training step measured 20 ms on one thread, 460 ms on two."""
    from sortednet_cli.engine.runtime import set_threads

    previous = torch.get_num_threads()
    set_threads(1, "one_thread")
    yield
    set_threads(previous, "one_thread")


@pytest.fixture(scope="module")
def trained():
    """(model, stoi): 4 layers x 32, trained with the Sorted LLaMA loss (mean cross-entropy of
    every exit through the shared norm and head)."""
    torch.manual_seed(0)
    text = SHAKESPEARE.read_text()[:200_000] if SHAKESPEARE.exists() else FALLBACK_TEXT * 20
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    data = torch.tensor([stoi[ch] for ch in text])
    config = LlamaConfig(vocab_size=len(stoi), hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=CONTEXT)
    model = sorted_from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(STEPS):
        starts = torch.randint(0, len(data) - BLOCK - 1, (16,))
        x = torch.stack([data[s:s + BLOCK] for s in starts])
        y = torch.stack([data[s + 1:s + BLOCK + 1] for s in starts])
        state = model.run_stem(TokenBatch(x), 1.0)
        loss = 0.0
        for index in range(LAYERS):
            state = model.run_block(0, index, state, 1.0)
            logits = model.run_head(state, 1.0)
            loss = loss + torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad()
        (loss / LAYERS).backward()
        optimizer.step()
    return model.eval(), stoi


@pytest.fixture(scope="module")
def decoder(trained):
    return ExitDecoder(trained[0])


@pytest.fixture(scope="module")
def prompts(trained):
    stoi = trained[1]
    return [[stoi[ch] for ch in text if ch in stoi] for text in PROMPTS]


@pytest.fixture(scope="module")
def greedy(decoder, prompts):
    """Full greedy output of every prompt at every length."""
    return {(i, n): decoder.full(p, n).tokens for i, p in enumerate(prompts) for n in LENGTHS}


def full_forward_cache(model, ids: list[int]) -> hf_compat.LayerCache:
    """The keys/values of every layer from one plain forward over `ids`."""
    cache = hf_compat.LayerCache(LAYERS)
    with torch.no_grad():
        positions = torch.arange(len(ids))[None]
        hidden = model.embed(torch.tensor([ids]), positions)
        table = model.positions(hidden, positions)
        for index in range(len(model.layers)):
            hidden = model.run_layer(index, hidden, model.layer_mask(index, None, len(ids), len(ids), hidden), table, cache)
    return cache


@pytest.mark.parametrize("draft_exit", [1, 2, 3])
def test_speculative_is_token_identical_to_full_greedy(decoder, prompts, greedy, draft_exit):
    rejected = 0
    for i, prompt in enumerate(prompts):
        for length in LENGTHS:
            for draft_len in (1, 3, 5, "auto"):
                result = decoder.speculative(prompt, length, draft_exit, draft_len)
                assert result.tokens == greedy[i, length], (i, length, draft_len)
                stats = result.stats
                assert stats["tokens_per_verification"] == pytest.approx(length / stats["rounds"])
                rejected += stats["drafted"] - stats["accepted"]
    assert rejected > 0  # the roll-back path ran


@pytest.mark.parametrize("draft_exit", [1, 3])
def test_tree_speculation_is_token_identical_to_full_greedy(decoder, prompts, greedy, draft_exit):
    """Trees of 2 and 3 drafts per level, at every length (the last rounds' trees are cut to the
    room left); rejected levels ran, and from exit 1 a tree accepts more than a chain of the same
    length (paths off the first child were taken)."""
    rejected = off_first_child = 0
    for i, prompt in enumerate(prompts):
        for length in LENGTHS:
            for draft_len, width in ((1, 2), (4, 3), ("auto", 3)):
                result = decoder.speculative(prompt, length, draft_exit, draft_len, draft_width=width)
                assert result.tokens == greedy[i, length], (i, length, draft_len, width)
                stats = result.stats
                assert stats["draft_width"] == width and stats["tokens_per_verification"] == pytest.approx(length / stats["rounds"])
                rejected += stats["drafted"] - stats["accepted"]
        chain = decoder.speculative(prompt, 100, draft_exit, 4).stats["accepted"]
        off_first_child += decoder.speculative(prompt, 100, draft_exit, 4, draft_width=3).stats["accepted"] > chain
    assert rejected > 0
    assert off_first_child > 0 or draft_exit == 3  # exit 3 of 4 agrees nearly always: its chains are accepted whole


def stopped_rounds(model, prompt: list[int], new_tokens: int, draft_exit: int, draft_len: int, stop: float) -> tuple[list[int], list[int], int]:
    """Greedy self-speculation with a confidence stop, recomputed from scratch (no cache): each
    round drafts from the exit while its top probability is at least `stop` (at most draft_len),
    then the full model's argmax after each position decides. Returns (tokens, drafts per round,
    rounds the stop cut short)."""
    tokens, lengths, cut = [], [], 0
    with torch.no_grad():
        while len(tokens) < new_tokens:
            drafts = []
            while len(drafts) < min(draft_len, new_tokens - len(tokens) - 1):
                exit_logits = model(TokenBatch(torch.tensor([prompt + tokens + drafts])), SubModel(1.0, (draft_exit,)))[0, -1]
                if float(torch.softmax(exit_logits, -1).max()) < stop:
                    cut += 1
                    break
                drafts.append(int(exit_logits.argmax()))
            full = model(TokenBatch(torch.tensor([prompt + tokens + drafts])))[0, -len(drafts) - 1:].argmax(-1).tolist()
            agreed = 0
            while agreed < len(drafts) and drafts[agreed] == full[agreed]:
                agreed += 1
            tokens += drafts[:agreed] + [full[agreed]]
            lengths.append(len(drafts))
    return tokens, lengths, cut


def test_a_confidence_stop_drafts_exactly_while_the_exit_is_sure(trained, decoder, prompts, greedy):
    """draft_stop: every round's drafts are those a from-scratch recomputation makes (drafting
    while the exit's top probability is at least the stop, at most draft_len), and the output is
    full greedy's. A stop near 1 drafts nothing (plain full decoding); a stop near 0 drafts the
    full length."""
    model = trained[0]
    for i, prompt in enumerate(prompts):
        for draft_exit, stop in ((1, 0.5), (3, 0.6), (3, 0.9)):
            result = decoder.speculative(prompt, 40, draft_exit, 6, draft_stop=stop)
            expected, lengths, cut = stopped_rounds(model, prompt, 40, draft_exit, 6, stop)
            assert result.tokens == expected == greedy[i, 40], (i, draft_exit, stop)
            assert result.stats["draft_lengths"] == lengths and result.stats["drafted"] == sum(lengths)
            assert result.stats["draft_stop"] == stop and 0 < cut < len(lengths)  # some rounds cut short, not all
        nothing = decoder.speculative(prompt, 40, 3, 6, draft_stop=0.999999).stats
        assert nothing["drafted"] == 0 and nothing["rounds"] == 40
        assert decoder.speculative(prompt, 40, 3, 6, draft_stop=1e-9).stats["draft_lengths"] == decoder.speculative(prompt, 40, 3, 6).stats["draft_lengths"]
        assert decoder.speculative(prompt, 40, "auto", "auto", draft_stop=0.5).tokens == greedy[i, 40]


def test_a_draft_tree_grows_by_cumulative_probability_and_masks_all_but_ancestors():
    """Three tokens, width 2: level 1 holds the root's top two; level 2 the two best (parent,
    token) pairs by summed log-probability, both children of the first node here; each node's
    mask row opens the prefix and its ancestors; verification follows the full model's choices."""
    from sortednet_cli.decode.tree import DraftTree

    tree = DraftTree(start=3, width=2, depth=2, vocab_size=3, dtype=torch.float32, device=torch.device("cpu"))
    log = lambda *p: torch.tensor([p]).log()  # noqa: E731
    assert tree.grow(log(0.6, 0.3, 0.1)) == (1, 2)
    assert tree.tokens[1:3].tolist() == [0, 1] and tree.parents[1:3].tolist() == [0, 0]
    # node 1 (p 0.6) continues 0.7 / 0.3, node 2 (p 0.3) 0.5 / 0.5: 0.42 and 0.18 beat 0.15
    assert tree.grow(torch.cat([log(0.7, 0.3, 0.0), log(0.5, 0.5, 0.0)])) == (3, 2)
    assert tree.tokens[3:5].tolist() == [0, 1] and tree.parents[3:5].tolist() == [1, 1]
    allowed = tree.mask(0, 5, None, tree.positions())[0, 0] == 0
    prefix = [True] * 3
    assert allowed.tolist() == [prefix + [True, False, False, False, False], prefix + [True, True, False, False, False],
                                prefix + [True, False, True, False, False], prefix + [True, True, False, True, False],
                                prefix + [True, True, False, False, True]]
    assert tree.positions().tolist() == [[3, 4, 4, 5, 5]]
    windowed = tree.mask(3, 2, 2, tree.positions())[0, 0] == 0  # window 2: a query at 5 sees positions 4 and 5 only
    assert windowed.tolist() == [[False] * 3 + [False, True, False, True, False], [False] * 3 + [False, True, False, False, True]]
    full_choice = torch.tensor([0, 1, 2, 2, 2])  # after node 0: token 0 (node 1); after node 1: 1 (node 4); after node 4: 2
    assert tree.accepted(full_choice) == ([1, 4], [0, 1, 2])
    assert tree.accepted(torch.tensor([2, 0, 0, 0, 0])) == ([], [2])  # the first level missed: the full model's token alone


def test_the_cache_keeps_a_verified_path_next_to_the_prefix():
    cache = hf_compat.LayerCache(1, 8)
    keys = torch.arange(8.0).view(1, 1, 8, 1)
    cache.update(keys, -keys, 0)
    cache.keep(0, 3, torch.tensor([4, 6]))
    kept_keys, kept_values = cache.filled(0)
    assert kept_keys.flatten().tolist() == [0, 1, 2, 4, 6] and kept_values.flatten().tolist() == [0, -1, -2, -4, -6]
    # Every layer at once: one copy over the joint buffers, or layer by layer where a layer's writes are shaped
    # otherwise (here 2 key/value heads against 1) and it has buffers of its own.
    for second_heads in (1, 2):
        cache = hf_compat.LayerCache(2, 8)
        cache.update(keys, -keys, 0)
        cache.update(10 + keys.expand(1, second_heads, 8, 1), -keys.expand(1, second_heads, 8, 1), 1)
        cache.keep_all(3, torch.tensor([4, 6]))
        assert cache.lengths == [5, 5]
        assert cache.filled(0)[0].flatten().tolist() == [0, 1, 2, 4, 6]
        assert cache.filled(1)[0][0, -1].flatten().tolist() == [10, 11, 12, 14, 16]
        assert cache.filled(1)[1][0, 0].flatten().tolist() == [0, -1, -2, -4, -6]


def test_speculative_is_exact_when_the_exits_disagree(trained, prompts):
    """An untrained copy: its exits disagree on most drafts, so most rounds roll back."""
    torch.manual_seed(1)
    model = sorted_from_config(trained[0].config).eval()
    decoder = ExitDecoder(model)
    for prompt in prompts:
        expected = decoder.full(prompt, 60).tokens
        for draft_exit in (1, 3):
            for draft_len, width in ((2, 1), ("auto", 1), (3, 2)):
                result = decoder.speculative(prompt, 60, draft_exit, draft_len, draft_width=width)
                assert result.tokens == expected
                assert result.stats["acceptance_rate"] < (0.9 if width == 1 else 1.0)


def test_exit_mode_equals_recomputing_the_exit_from_scratch(trained, decoder, prompts):
    model = trained[0]
    for depth in range(1, LAYERS + 1):
        result = decoder.exit(prompts[0], 12, depth)
        ids = list(prompts[0])
        with torch.no_grad():
            for token in result.tokens:
                expected = int(model(TokenBatch(torch.tensor([ids])), SubModel(1.0, (depth,)))[0, -1].argmax())
                assert token == expected
                ids.append(token)
        assert result.stats["exit"] == depth


def test_early_exit_at_threshold_one_is_full_greedy(decoder, prompts, greedy):
    result = decoder.early_exit(prompts[1], 40, threshold=1.0)
    assert set(result.stats["exits_used"]) == {LAYERS}  # no exit reached probability 1.0 exactly
    assert result.tokens == greedy[1, 40]


def test_early_exit_fills_skipped_layers_with_exact_keys_and_values(trained, decoder, prompts):
    model = trained[0]
    prompt = prompts[0]
    result = decoder.early_exit(prompt, 60, threshold=0.5)
    exits_used = result.stats["exits_used"]
    assert min(exits_used) < LAYERS, "no token exited early: lower the threshold"
    cache = decoder.cache
    lengths = [cache.length(layer) for layer in range(LAYERS)]
    assert lengths == sorted(lengths, reverse=True)  # every layer holds a prefix of the sequence
    # Position len(prompt) - 1 + i predicted token i; some early-exited positions were filled later.
    filled_late = [i for i, e in enumerate(exits_used) if e < LAYERS and len(prompt) - 1 + i < lengths[-1]]
    assert filled_late
    reference = full_forward_cache(model, prompt + result.tokens[:-1])
    for layer in range(LAYERS):
        n = lengths[layer]
        keys, values = cache.filled(layer)
        reference_keys, reference_values = reference.filled(layer)
        torch.testing.assert_close(keys, reference_keys[..., :n, :], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(values, reference_values[..., :n, :], rtol=1e-5, atol=1e-5)
    agreement = teacher_forced_agreement(model, prompt, result.tokens)
    assert 0.0 <= agreement <= 1.0
    assert result.stats["mean_exit_layer"] == pytest.approx(sum(exits_used) / len(exits_used))


def test_teacher_forced_agreement_of_full_greedy_is_one(trained, prompts, greedy):
    assert teacher_forced_agreement(trained[0], prompts[2], greedy[2, 40]) == 1.0


def test_sampling_is_reproducible_with_a_seed(decoder, prompts, greedy):
    first = decoder.full(prompts[0], 40, temperature=0.9, top_k=10, seed=3).tokens
    assert decoder.full(prompts[0], 40, temperature=0.9, top_k=10, seed=3).tokens == first
    assert decoder.full(prompts[0], 40, temperature=0.9, top_k=10, seed=4).tokens != first
    assert decoder.full(prompts[0], 40, temperature=0.9, top_k=1, seed=5).tokens == greedy[0, 40]


def test_stops_at_eos_and_at_the_context_limit(decoder, prompts, greedy):
    expected = greedy[0, 40]
    eos = expected[5]
    stop = expected.index(eos) + 1
    for result in (decoder.full(prompts[0], 40, eos_id=eos), decoder.speculative(prompts[0], 40, 2, 4, eos_id=eos)):
        assert result.tokens == expected[:stop] and result.stats["stop_reason"] == "eos"
    long_prompt = (prompts[1] * CONTEXT)[: CONTEXT - 5]
    full = decoder.full(long_prompt, 20)
    assert len(full.tokens) == 5 and full.stats["stop_reason"] == "context_limit" and full.stats["context_limit"] == CONTEXT
    assert decoder.speculative(long_prompt, 20, 3, "auto").tokens == full.tokens
    assert decoder.full((prompts[1] * CONTEXT)[:CONTEXT], 3).tokens == []


def test_library_baselines_match_full_greedy(trained, prompts, greedy):
    model = trained[0]
    stored_eos = model.hf.generation_config.eos_token_id
    model.hf.generation_config.eos_token_id = greedy[0, 40][3]  # would stop `generate` early
    try:
        assert library_greedy(model, prompts[0], 40).tokens == greedy[0, 40]
    finally:
        model.hf.generation_config.eos_token_id = stored_eos
    result = library_assistant_early_exit(model, prompts[0], 40, exit=3, draft_len=4, schedule="heuristic")
    assert result.tokens == greedy[0, 40] and result.stats["tokens_per_second"] > 0
    assert model.hf.generation_config.num_assistant_tokens is None  # restored after the call


def test_trained_exit_three_of_four_gets_drafts_accepted(decoder, prompts):
    assert decoder.speculative(prompts[0], 100, 3, 4).stats["acceptance_rate"] > 0


def test_the_chooser_takes_the_argmax_of_expected_tokens_per_second():
    """choose_draft against its formula written out here: a round of K drafts from exit E costs
    (K + 1)(E layer + step) + K head + (L - E)(layer + K per_position) + head + K head_per_position
    + round, and yields 1 + a + ... + a^K tokens on average."""
    costs = DecodeCosts(layer=1.0, layer_per_position=0.2, head=0.5, head_per_position=0.05, step=0.1, round=0.3)
    layers = 6

    def rate(a, exit, k):
        seconds = (k + 1) * (exit * 1.0 + 0.1) + k * 0.5 + (layers - exit) * (1.0 + k * 0.2) + 0.5 + k * 0.05 + 0.3
        return sum(a ** i for i in range(k + 1)) / seconds

    acceptance = {1: 0.3, 2: 0.8, 3: 0.95, 5: 0.99}
    lengths = range(0, 17)
    expected = max(((e, k) for e in acceptance for k in lengths), key=lambda ek: rate(acceptance[ek[0]], *ek))
    assert choose_draft(costs, acceptance, layers, lengths) == expected == (3, 4)
    assert costs.round_seconds(layers, 2, 0) == pytest.approx(6 * 1.0 + 0.5 + 0.1 + 0.3)  # length 0: one full greedy step
    assert choose_draft(costs, {1: 0.0, 2: 0.0}, layers, lengths) == (1, 0)  # drafts never accepted: plain greedy
    assert choose_draft(costs, {1: 1.0}, layers, [0, 4, 16]) == (1, 16)  # always accepted and cheap: the longest
    assert expected_tokens(0.5, 3) == pytest.approx(1.875)


def test_auto_draft_exit_and_length_are_token_identical_to_full_greedy(decoder, prompts, greedy):
    for i, prompt in enumerate(prompts):
        for length in (7, 100):
            result = decoder.speculative(prompt, length, "auto", "auto")
            assert result.tokens == greedy[i, length], (i, length)
            stats = result.stats
            assert len(stats["draft_exits"]) == stats["rounds"] == len(stats["draft_lengths"])
            assert set(stats["draft_exits"]) <= {1, 2, 3} and max(stats["draft_lengths"]) <= 16
            assert stats["breakdown"]["rounds"] == stats["rounds"]
    long = decoder.speculative(prompts[0], 100, "auto", "auto").stats
    assert long["accepted"] > 0  # the trained exits were chosen to draft, and agreed
    assert decoder.speculative(prompts[1], 40, 2, "auto").tokens == greedy[1, 40]


def test_a_timed_generation_breaks_its_time_down(trained, prompts, greedy):
    timed = ExitDecoder(trained[0], timed=True)
    result = timed.speculative(prompts[0], 40, 2, 3)
    assert result.tokens == greedy[0, 40]
    breakdown = result.stats["breakdown"]
    phases = breakdown["ms_per_token"]
    assert set(phases) == {"prefill", "draft", "verify", "head", "bookkeeping"}
    assert sum(phases.values()) * len(result.tokens) / 1000 == pytest.approx(result.stats["seconds"], rel=0.05)
    assert sum(breakdown["share"].values()) == pytest.approx(1.0)
    # Each round: the input and its 3 drafts through 2 draft layers one by one, then 2 verifying layers over 4 positions.
    rounds = result.stats["rounds"]
    calls = breakdown["layer_calls_per_token"] * len(result.tokens)
    assert calls == pytest.approx(sum(2 * (k + 1) + 2 for k in result.stats["draft_lengths"]))
    assert breakdown["verify_calls"] == 2 * sum(1 for k in result.stats["draft_lengths"] if k > 0) and rounds > 0
    assert "breakdown" not in ExitDecoder(trained[0]).full(prompts[0], 5).stats
    # A tree of width 3: the input one position, then each of the 3 levels 3 positions at once,
    # through the 2 draft layers; the 2 verifying layers over all 1 + 3 * 3 nodes.
    tree = timed.speculative(prompts[0], 40, 2, 3, draft_width=3)
    assert tree.tokens == greedy[0, 40]
    calls = tree.stats["breakdown"]["layer_calls_per_token"] * len(tree.tokens)
    assert calls == pytest.approx(sum(2 * (k + 1) + 2 for k in tree.stats["draft_lengths"]))
    several = [(2 * k, 3) for k in tree.stats["draft_lengths"]] + [(2, 1 + 3 * k) for k in tree.stats["draft_lengths"] if k]
    assert tree.stats["breakdown"]["verify_positions_per_call"] == pytest.approx(sum(c * p for c, p in several) / sum(c for c, _ in several))


SAMPLED_RUNS = 1000


def test_speculative_sampling_is_distributed_as_the_full_model():
    """Sampled self-speculation against the full model's exact distribution, on a tiny untrained
    decoder with 8 tokens whose two exits disagree (scaled head: TV(exit 1, full) > 0.2 below, so
    sampling the draft's distribution would fail). Over N seeded runs of 3 new tokens, with 1-3
    drafts a round (so the first and third tokens come from accepted drafts, resampled residuals
    and bonus tokens alike), the empirical distributions of the first and the third token are
    within total variation 0.08 of the exact ones (the third's: the sum over the 64 first two
    tokens of p(t1) p(t2 | t1) p(t3 | t1, t2)). For k = 8 outcomes, P(TV >= e) <= (2^k - 2)
    exp(-2 N e^2) (Bretagnolle-Huber-Carol): 7e-4 at N = 1000 and e = 0.08 for a correct sampler,
    whose typical TV is about 0.03; sampling the draft's distribution instead would give about
    0.28. top_k=3 must keep every first token in the full model's top 3."""
    from sortednet_cli.decode.engine import Warp

    torch.manual_seed(0)
    vocab = 8
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=16)
    model = sorted_from_config(config).eval()
    with torch.no_grad():
        model.hf.lm_head.weight.mul_(25)
        sequences = torch.tensor([[1, 5, a, b] for a in range(vocab) for b in range(vocab)])
        logits = model(TokenBatch(sequences))
        exit_logits = model(TokenBatch(sequences[:1, :2]), SubModel(1.0, (1,)))[0, -1]
    warp = Warp(1.0)
    first = warp.probabilities(logits[0, 1])
    second = warp.probabilities(logits[:, 2]).view(vocab, vocab, vocab)[:, 0]  # p(t2 | t1)
    third = torch.einsum("a,ab,abc->c", first, second, warp.probabilities(logits[:, 3]).view(vocab, vocab, vocab))
    assert 0.5 * (warp.probabilities(exit_logits) - first).abs().sum() > 0.2

    decoder = ExitDecoder(model)
    counts = torch.zeros(2, vocab)
    rejected = 0
    for seed in range(SAMPLED_RUNS):
        result = decoder.speculative([1, 5], 3, 1, 1 + seed % 3, temperature=1.0, seed=seed)
        counts[0, result.tokens[0]] += 1
        counts[1, result.tokens[2]] += 1
        rejected += result.stats["drafted"] - result.stats["accepted"]
    empirical = counts / SAMPLED_RUNS
    assert 0.5 * (empirical[0] - first).abs().sum() < 0.08
    assert 0.5 * (empirical[1] - third).abs().sum() < 0.08
    assert rejected > SAMPLED_RUNS // 4  # the residual path ran often
    top3 = set(torch.topk(logits[0, 1], 3).indices.tolist())
    firsts = {decoder.speculative([1, 5], 2, 1, 1, temperature=1.0, top_k=3, seed=seed).tokens[0] for seed in range(60)}
    assert firsts <= top3 and len(firsts) > 1
    # A confidence stop reads only the draft's own distribution: the same distributions.
    counts = torch.zeros(2, vocab)
    lengths = []
    for seed in range(SAMPLED_RUNS):
        result = decoder.speculative([1, 5], 3, 1, 2, temperature=1.0, seed=seed, draft_stop=0.3)
        counts[0, result.tokens[0]] += 1
        counts[1, result.tokens[2]] += 1
        lengths += result.stats["draft_lengths"]
    empirical = counts / SAMPLED_RUNS
    assert 0.5 * (empirical[0] - first).abs().sum() < 0.08
    assert 0.5 * (empirical[1] - third).abs().sum() < 0.08
    assert set(lengths) == {0, 1, 2}  # some rounds stopped before their first or second draft
    again = decoder.speculative([1, 5], 3, 1, 2, temperature=1.0, seed=7).tokens
    assert decoder.speculative([1, 5], 3, 1, 2, temperature=1.0, seed=7).tokens == again  # seeded


@pytest.mark.parametrize("call", [
    lambda d, p: d.exit(p, 5, 0),
    lambda d, p: d.exit(p, 5, LAYERS + 1),
    lambda d, p: d.speculative(p, 5, 2, 0),
    lambda d, p: d.speculative(p, 5, 2, "fast"),
    lambda d, p: d.speculative(p, 5, 2, 2.5),
    lambda d, p: d.speculative(p, 5, LAYERS, 3),
    lambda d, p: d.early_exit(p, 5, 0.0),
    lambda d, p: d.early_exit(p, 5, 1.5),
    lambda d, p: d.early_exit(p, 5, 0.9, exits=[0, 2]),
    lambda d, p: d.full([], 5),
    lambda d, p: d.full(p, 0),
    lambda d, p: d.full(p, 5, temperature=-1.0),
    lambda d, p: d.speculative(p, 5, "fast", 2),
    lambda d, p: d.speculative(p, 5, 0, "auto"),
    lambda d, p: d.speculative(p, 5, 2, 2, temperature=-0.5),
    lambda d, p: d.speculative(p, 5, 2, 2, temperature=1.0, top_k=0),
    lambda d, p: d.speculative(p, 5, 2, 2, draft_width=0),
    lambda d, p: d.speculative(p, 5, 2, 2, draft_width="wide"),
    lambda d, p: d.speculative(p, 5, 2, 2, temperature=0.8, draft_width=2),
    lambda d, p: d.speculative(p, 5, 2, 2, draft_stop=1.0),
    lambda d, p: d.speculative(p, 5, 2, 2, draft_stop=-0.1),
    lambda d, p: d.speculative(p, 5, 2, 2, draft_stop="sure"),
    lambda d, p: d.speculative(p, 5, 2, 2, draft_width=2, draft_stop=0.5),
])
def test_bad_input_is_a_user_error(decoder, prompts, call):
    with pytest.raises(UserError) as info:
        call(decoder, prompts[0])
    assert "\n" not in str(info.value)


def test_the_library_baselines_refuse_a_bad_request_with_the_exit_decoders_line(trained, decoder, prompts):
    """One prompt and length check for every decoding path: the same request is refused by
    ExitDecoder and by the library baselines with the same one line (a bool is no count)."""
    model = trained[0]
    vocab = decoder.vocab_size
    for prompt, new in [([], 5), (prompts[0], 0), (prompts[0], True), ([vocab], 5), (prompts[1] * CONTEXT, 5)]:
        with pytest.raises(UserError) as ours:
            decoder.full(prompt, new)
        for baseline in (lambda: library_greedy(model, prompt, new), lambda: library_assistant_early_exit(model, prompt, new, exit=2)):
            with pytest.raises(UserError) as theirs:
                baseline()
            assert str(theirs.value) == str(ours.value) and "\n" not in str(ours.value)
    for exit in (True, 0, LAYERS):
        with pytest.raises(UserError, match="assistant_early_exit must be in 1..3"):
            library_assistant_early_exit(model, prompts[0], 5, exit=exit)
    with pytest.raises(UserError, match="an int >= 1 or 'auto', not True"):
        decoder.speculative(prompts[0], 5, 2, True)


def test_interleaved_rounds_report_median_rates_and_median_paired_ratios():
    """bench.rounds: a row's tokens/s is the median over the rounds of a round's rate, its speed-up
    the median over (round, prompt) of its rate over the reference's on the same prompt in the
    same round; each case warms up once, then every prompt goes through every case in turn."""
    from sortednet_cli.decode.bench import _Case, _measure_interleaved

    order = []

    def runner(name: str, seconds: list[float]):
        calls = iter([0.1, *seconds])  # the warm-up, then one call per round and prompt

        def run(prompt, n):
            order.append((name, prompt[0]))
            return Generation([0] * n, {"seconds": next(calls)})
        return run

    cases = [_Case({"mode": "full", "label": "reference"}, runner("ref", [1.0, 2.0, 1.0])),
             _Case({"mode": "speculative", "label": "other"}, runner("other", [0.5, 1.0, 2.0]), lambda runs: {"described": len(runs)})]
    reference, other = _measure_interleaved(cases, [[1, 2]], 10, rounds=3)
    assert reference["round_tokens_per_second"] == [10.0, 5.0, 10.0] and reference["tokens_per_second"] == 10.0
    assert other["round_tokens_per_second"] == [20.0, 10.0, 5.0] and other["tokens_per_second"] == 10.0
    assert other["speedup"] == 2.0 and reference["speedup"] == 1.0  # pairs 2, 2, 0.5
    assert other["speedup_interval"] == [0.5, 2.0] and reference["speedup_interval"] == [1.0, 1.0]
    assert other["tokens"] == 30 and other["seconds"] == 3.5 and other["described"] == 1
    # one round over three prompts: the last prompt ran slow for `other` alone; the paired median
    # says 2x where the totals would say 0.5x
    order.clear()
    cases = [_Case({"mode": "full", "label": "reference"}, runner("ref", [1.0, 1.0, 1.0])),
             _Case({"mode": "speculative", "label": "other"}, runner("other", [0.5, 0.5, 5.0]))]
    reference, other = _measure_interleaved(cases, [[7], [8], [9]], 10, rounds=1)
    assert other["speedup"] == 2.0 and other["tokens_per_second"] == 5.0 and "round_tokens_per_second" not in other
    assert order == [("ref", 7), ("other", 7), ("ref", 7), ("other", 7), ("ref", 8), ("other", 8), ("ref", 9), ("other", 9)]


def test_the_pick_and_the_best_fixed_setting_go_by_speed_up():
    """With interleaved rounds a row's speed-up (the median of its per-round ratios) and its
    median tokens/s can rank rows differently; the pick follows the speed-up."""
    from sortednet_cli.decode.bench import _auto_against_fixed, _best_fixed, _pick

    row = lambda label, rate, speedup, low, **extra: {"mode": "speculative", "label": label, "tokens_per_second": rate,  # noqa: E731
                                                      "speedup": speedup, "speedup_interval": [low, speedup + 0.1],
                                                      "acceptance_rate": 0.5, "identical": True, **extra}
    rows = [{"mode": "full", "label": "full greedy", "tokens_per_second": 100.0, "speedup": 1.0, "speedup_interval": [1.0, 1.0]},
            row("E=3 K=2", 130.0, 1.25, 1.1, draft_exit=3, draft_len=2), row("E=3 K=4 W=3", 128.0, 1.30, 1.22, draft_exit=3, draft_len=4),
            row("E=3 K=auto", 131.0, 1.20, 1.0, draft_exit=3, draft_len="auto")]
    pick = _pick(rows)
    assert pick["label"] == "E=3 K=4 W=3" and _best_fixed(rows)["label"] == "E=3 K=4 W=3"
    assert pick["as_fast_within_noise"] == ["E=3 K=2"]  # 1.25x reaches the pick's interval (from 1.22x), auto's 1.20x does not
    auto = _auto_against_fixed(rows, _best_fixed(rows))[0]
    assert auto["ratio"] == pytest.approx(1.20 / 1.30) and not auto["within_best_interval"]


def test_a_speed_up_interval_is_a_seeded_bootstrap_of_the_median():
    """median_interval: the 2.5th and 97.5th percentiles of the medians of resamples with
    replacement -- reproducible, inside the values' range, around the median, a point where
    every value is the same, and narrower with more pairs of the same spread."""
    from sortednet_cli.decode.bench import median_interval

    values = [1.0 + 0.01 * ((7 * i) % 40) for i in range(40)]  # 1.00 .. 1.39, shuffled
    low, high = median_interval(values)
    assert median_interval(values) == [low, high] and min(values) <= low < statistics.median(values) < high <= max(values)
    assert median_interval([1.5] * 12) == [1.5, 1.5] and median_interval([2.0]) == [2.0, 2.0]
    wide = median_interval(values[:8])
    assert wide[1] - wide[0] > high - low


def test_bench_reports_every_mode_and_picks_a_lossless_setting(trained, prompts, tmp_path):
    result = bench_decode(trained[0], prompts[:2], 16, exits=[2], thresholds=[0.5], speculative_settings=[(3, 4, 1, 0.0), (2, "auto", 1, 0.0), (3, 4, 2, 0.0), (3, 8, 1, 0.5)],
                          library_exits=[3], temperature=0.8)
    modes = [row["mode"] for row in result["rows"]]
    assert modes == ["full", "full_library_layers", "exit", "early_exit", "speculative", "speculative", "speculative", "speculative",
                     "full_sampled", "speculative_sampled", "speculative_sampled", "speculative_sampled", "library_greedy",
                     "library_assistant_early_exit"]  # a llama layout: lean steps, so the library-layers row; trees are not sampled
    assert [row["label"] for row in result["rows"] if row["mode"] == "speculative"] == ["E=3 K=4", "E=2 K=auto", "E=3 K=4 W=2", "E=3 K=8 stop=0.5"]
    assert [row["label"] for row in result["rows"] if row["mode"] == "speculative_sampled"][-1] == "E=3 K=8 stop=0.5, sampled T=0.8"
    assert result["new_tokens_per_prompt"] == [16, 16]
    clipped = bench_decode(trained[0], [prompts[0] * 21], 16, speculative_settings=[(3, 4, 1, 0.0)])  # 252 of the 256 positions given
    assert clipped["new_tokens_per_prompt"] == [CONTEXT - len(prompts[0]) * 21] == [4] and clipped["rows"][0]["tokens"] == 4
    sampled = [row for row in result["rows"] if row["mode"] == "speculative_sampled"]
    assert all(0 <= row["acceptance_rate"] <= 1 and row["tokens"] == 32 and row["over_full_sampling"] > 0 for row in sampled)
    assert all(row["identical"] for row in result["rows"] if "identical" in row)
    assert result["rows"][0]["speedup"] == 1.0
    assert result["pick"]["mode"] in ("full", "speculative") and result["pick"]["reason"]
    plot_decode(result, tmp_path / "decode.png")
    assert (tmp_path / "decode.png").stat().st_size > 0
