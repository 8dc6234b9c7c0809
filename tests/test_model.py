"""model.py against transformers: logit parity, GGUF, cached generation, export, and bad input."""
import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F

import checkpoints as C
import model as M
from checkpoints import package_file

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
CASES = {
    "gpt2": ("gpt2", {}),
    "llama-gqa-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-gqa-untied": ("llama", {"tie_word_embeddings": False}),
    "llama-untied-llama3-rope": ("llama", {"tie_word_embeddings": False, "rope_parameters":
                                           {**LLAMA3_ROPE, "rope_theta": 500000.0}}),
    "llama-tied-llama3-rope": ("llama", {"tie_word_embeddings": True, "rope_parameters":
                                         {**LLAMA3_ROPE, "rope_theta": 500000.0}}),
    "qwen2-bias": ("qwen2", {}),
    "qwen3-qk-norm-tied": ("qwen3", {"tie_word_embeddings": True}),
    "qwen3-qk-norm-untied": ("qwen3", {"tie_word_embeddings": False}),
}


def max_logit_diff(ours, ref, idx):
    with torch.no_grad():
        return (ours(idx) - ref(idx).logits).abs().max().item()


@pytest.mark.parametrize("case", CASES)
def test_logit_parity_with_transformers(tiny_checkpoint, case):
    kind, overrides = CASES[case]
    folder, ref = tiny_checkpoint(kind, **overrides)
    ours, _ = C.load_checkpoint(folder)
    assert ours.config.tie_embeddings == ref.config.tie_word_embeddings
    idx = torch.randint(0, ref.config.vocab_size, (2, 100), generator=torch.Generator().manual_seed(0))
    assert max_logit_diff(ours, ref, idx) <= 1e-4
    if "llama3-rope" in case:  # the scaling must matter at these positions, or the case proves nothing
        plain = M.Transformer(dataclasses.replace(ours.config, rope_scaling=None))
        plain.load_state_dict(ours.state_dict())
        assert max_logit_diff(plain.eval(), ref, idx) > 1e-2


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    return C.load_checkpoint(smollm2_gguf)


def test_gguf_matches_transformers_gguf_loader(smollm2, smollm2_gguf):
    from transformers import AutoModelForCausalLM
    ours, tok = smollm2
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf),
                                               dtype=torch.float32).eval()
    prompts = ["The capital of France is", "def fibonacci(n):\n    ", "Question: What is 12 + 30?\nAnswer:",
               "Once upon a time, there was a"]
    for text in prompts:
        idx = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            a, b = ours(idx)[0, -1], ref(idx).logits[0, -1]
        assert a.argmax() == b.argmax(), text
        assert (a - b).abs().max() < 1e-3, text
    greedy_ours = ours.generate([tok.encode(prompts[0])], 8)[0]
    greedy_ref = ref.generate(torch.tensor([tok.encode(prompts[0])]), max_new_tokens=8, do_sample=False)[0, -8:]
    assert greedy_ours == greedy_ref.tolist()


def test_gguf_heldout_perplexity(smollm2):
    model, tok = smollm2
    with open(package_file("gensim", "test/test_data/lee_background.cor")) as f:
        idx = torch.tensor([tok.encode(f.read())[:1024]])
    with torch.no_grad():
        ppl = F.cross_entropy(model(idx)[0, :-1], idx[0, 1:]).exp().item()
    assert ppl < 40, ppl  # ~28; with llama.cpp's Q/K permutation left in place it is ~600


def test_unpermute_inverts_llama_cpp_permutation():
    n_head, w = 3, torch.arange(6 * 4 * 5).reshape(24, 5).float()
    # llama.cpp's convert script: reshape(n_head, 2, rows // n_head // 2, ...).swapaxes(1, 2)
    permuted = w.reshape(n_head, 2, 4, 5).transpose(1, 2).reshape(24, 5)
    assert torch.equal(C.unpermute(permuted, n_head), w)


def uncached_greedy(model, prompt, n):
    """n greedy tokens by a full forward pass per token: no cache, no padding, no batch."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(model(torch.tensor([seq]))[0, -1].argmax().item())
    return seq[len(prompt):]


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen3"])
def test_cached_generation_equals_uncached_greedy(tiny_checkpoint, kind):
    # Left-padded batch of different lengths through the static cache vs a full forward per token, row by row.
    model, _ = C.load_checkpoint(tiny_checkpoint(kind)[0])
    prompts = [[5, 17, 300, 42, 7], [9], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]]
    assert model.generate(prompts, 20) == [uncached_greedy(model, p, 20) for p in prompts]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_prefill_groups_chunks_and_rows_leaving_the_batch_keep_the_tokens(tiny_checkpoint, kind, monkeypatch):
    # Prefill in groups of 2 rows, each padded to its own longest prompt, and in chunks of 4 tokens; rows that stop
    # at different steps leave the batch, the last row moving into the first one's place: each row is still
    # its own uncached greedy continuation, and the decode steps really run on fewer rows.
    monkeypatch.setattr(M, "PREFILL_CHUNK", 4)
    monkeypatch.setattr(M, "PREFILL_ROWS", 2)
    model, _ = C.load_checkpoint(tiny_checkpoint(kind)[0])
    prompts = [[5, 17, 300, 42, 7], [9], [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [8, 8, 2, 400, 31, 6, 77, 1, 250]]
    free = [uncached_greedy(model, p, 24) for p in prompts]
    # a stop callback that ends row 0 after 3 tokens and row 2 after 10 (each row known by its first two tokens)
    limit = {tuple(free[0][:2]): 3, tuple(free[2][:2]): 10}
    assert len({tuple(row[:2]) for row in free}) == len(free)
    ends = [limit.get(tuple(row[:2]), 24) for row in free]
    rows_per_step, decode_step, moved, move = [], model.decode_step, [], M.KVCache.move
    monkeypatch.setattr(model, "decode_step", lambda idx, *a: rows_per_step.append(len(idx)) or decode_step(idx, *a))
    monkeypatch.setattr(M.KVCache, "move", lambda self, src, dst: moved.append(len(src)) or move(self, src, dst))
    got = model.generate(prompts, 24, stop=lambda toks: len(toks) == limit.get(tuple(toks[:2])))
    assert got == [row[:end] for row, end in zip(free, ends)]
    assert rows_per_step[0] == len(prompts) and rows_per_step[-1] < len(prompts) and max(moved) > 0


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_decode_step_logits_equal_the_full_forward(tiny_checkpoint, kind, monkeypatch):
    # Decoding folds each kv head's group of query heads into one query block; plain GQA must give the same logits.
    monkeypatch.setattr(M, "FOLD_MAX_T", 0)  # the full forward: plain GQA
    model, _ = C.load_checkpoint(tiny_checkpoint(kind)[0])
    cfg, ids = model.config, torch.tensor([[5, 17, 300, 42, 7, 9]])
    assert cfg.n_head > cfg.n_kv_head  # the folded path runs
    L = ids.shape[1]
    caches = [M.KVCache(1, cfg.n_kv_head, L, cfg.head_dim, "cpu", torch.float32) for _ in range(cfg.n_layer)]
    causal = torch.ones(L, L, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        model(ids[:, :-1], torch.arange(L - 1)[None], causal[:, :, :-1], caches, torch.arange(L - 1))
        step = model.decode_step(ids[:, -1:], torch.tensor([[L - 1]]), torch.tensor([L - 1]), causal[:, :, -1:], caches)
        full = model(ids)[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen3"])
def test_padded_batch_equals_each_row_alone(tiny_checkpoint, kind):
    model, _ = C.load_checkpoint(tiny_checkpoint(kind)[0])
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5, 4, 3, 2], [100]]
    batched = model.generate(prompts, 12)
    assert batched == [model.generate([p], 12)[0] for p in prompts]
    sampled = model.generate(prompts, 12, temperature=0.8, top_p=0.9, seed=3)
    assert sampled == model.generate(prompts, 12, temperature=0.8, top_p=0.9, seed=3)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_kept_caches_give_the_same_tokens(tiny_checkpoint, kind):
    # setup_caches: larger caches than needed, fewer rows than the cache holds, stale slots from an earlier call.
    model, _ = C.load_checkpoint(tiny_checkpoint(kind)[0])
    first, second = [[1, 2, 3], [9, 8, 7, 6, 5, 4, 3, 2], [100]], [[7, 7], [4, 5, 6, 7, 8]]
    long = [list(range(1, 30))]  # 29 + 20 tokens do not fit the kept caches: generate allocates its own
    fresh = [model.generate(first, 12), model.generate(second, 9), model.generate(long, 20)]
    model.setup_caches(batch=4, length=40)
    assert [model.generate(first, 12), model.generate(second, 9), model.generate(long, 20)] == fresh
    # As CUDA replays its compiled step: every decode step on all 4 rows (fillers too) and the whole cache.
    rows_per_step = []
    model.compiled_step = lambda idx, *a: rows_per_step.append(len(idx)) or model.decode_step(idx, *a)
    assert [model.generate(first, 12), model.generate(second, 9), model.generate(long, 20)] == fresh
    assert set(rows_per_step) == {4}


def test_kept_caches_of_another_dtype_are_one_clear_error(tiny_checkpoint):
    model, _ = C.load_checkpoint(tiny_checkpoint("llama")[0])
    model.setup_caches(batch=2, length=20)
    model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="call setup_caches again"):
        model.generate([[1, 2, 3]], 4)
    model.setup_caches(batch=2, length=20)
    assert len(model.generate([[1, 2, 3]], 4)[0]) == 4


def test_generation_stops_on_eos_and_stop_callback(tiny_checkpoint):
    model, _ = C.load_checkpoint(tiny_checkpoint("llama")[0])
    free = model.generate([[1, 2, 3]], 10)[0]
    assert model.generate([[1, 2, 3]], 10, eos_id=free[3])[0] == free[:free.index(free[3])]
    assert model.generate([[1, 2, 3]], 10, stop=lambda toks: len(toks) == 4)[0] == free[:4]


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    picks = {M.sample(logits, 1.0, 0.7, gen).item() for _ in range(200)}
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.7; 2 and 3 are outside the nucleus


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa-untied", "llama-tied-llama3-rope", "qwen2-bias",
                                  "qwen3-qk-norm-tied", "qwen3-qk-norm-untied"])
def test_export_round_trip_through_transformers(tiny_checkpoint, tmp_path, case):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
    kind, overrides = CASES[case]
    ours, tok = C.load_checkpoint(tiny_checkpoint(kind, **overrides)[0])
    with torch.no_grad():  # as after fine-tuning: weights differ from the source checkpoint
        for p in ours.parameters():
            p.add_(0.01)
    C.export_hf(ours, tok, tmp_path / "export")
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    idx = torch.randint(0, tok.n_vocab, (2, 50))
    assert max_logit_diff(ours, ref, idx) <= 1e-4
    # For model_type qwen2/qwen3, AutoTokenizer swaps in Qwen2's own pre-tokenizer whatever tokenizer.json says,
    # which only differs here because these tiny checkpoints pair GPT-2's tokenizer with every family.
    tokenizer_class = PreTrainedTokenizerFast if kind.startswith("qwen") else AutoTokenizer
    text = "Hello world, 1234 tokens!"
    assert tokenizer_class.from_pretrained(tmp_path / "export")(text)["input_ids"] == tok.encode(text)
    again, _ = C.load_checkpoint(str(tmp_path / "export"))
    with torch.no_grad():
        assert torch.equal(again(idx), ours(idx))


# -----------------------------------------------------------------------------
# Bad input: each error says what is wrong

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        C.load_checkpoint(str(tmp_path / "nope"))


def test_folder_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        C.load_checkpoint(str(tmp_path))


def test_unsupported_model_type(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    cfg["model_type"] = "mamba"
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="unsupported model_type 'mamba'"):
        C.load_checkpoint(folder)


def test_sentencepiece_tokenizer_is_refused(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    for f in ("vocab.bpe", "encoder.json"):
        os.remove(os.path.join(folder, f))
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02")  # a SentencePiece protobuf, as in Llama 2
    with pytest.raises(ValueError, match="(?i)sentencepiece"):
        C.load_checkpoint(folder)


def test_corrupt_safetensors_header(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"{not json at all")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        C.load_checkpoint(folder)


def test_tokenizer_model_vocabulary_mismatch(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama", vocab_size=1000)
    with pytest.raises(ValueError, match="tokenizer has 50257 tokens but the model's vocabulary is 1000"):
        C.load_checkpoint(folder)


def test_missing_and_misshapen_tensors(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    tensors = C.read_hf_tensors(folder)
    with open(os.path.join(folder, "config.json")) as f:
        model = M.Transformer(C.config_from_hf(json.load(f)))
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        C.load_hf_state_dict(model, {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(KeyError, match="extra.weight"):
        C.load_hf_state_dict(model, {**tensors, "extra.weight": torch.zeros(2)})
    bad = {**tensors, "model.norm.weight": torch.zeros(7)}
    with pytest.raises(ValueError, match=r"model.norm.weight: checkpoint \(7,\), model norm.weight \(32,\)"):
        C.load_hf_state_dict(model, bad)


def test_hub_name_without_network_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="could not fetch 'no-such-org/no-such-model'"):
        C.load_checkpoint("no-such-org/no-such-model")
