"""
Tokenizers for tokenwise. Every tokenizer is a byte-level BPE run by tiktoken, built from the checkpoint's own
files and never downloaded:
- a Hugging Face tokenizer.json (GPT-2, SmolLM2, Qwen2, Llama 3, and what Tokenizer.save writes),
- GPT-2's encoder.json + vocab.bpe (or vocab.json + merges.txt),
- Llama 3's tiktoken-format tokenizer.model,
- the metadata of a .gguf file (tokenizer.ggml.model == "gpt2").
SentencePiece tokenizers (Llama 2, Mistral v0.1) are not byte-level BPE and cannot be expressed in tiktoken; they
are rejected with a clear error instead of being tokenized slightly wrong.
The checkpoint's chat template (tokenizer_config.json's chat_template, a chat_template.jinja file beside it, or the
GGUF's tokenizer.chat_template) is kept as `chat_template` for data/prepare.py; it changes no token id, so it is not
part of the fingerprint.
"""
import base64
import hashlib
import json
import os
import unicodedata

import tiktoken

# Split regexes: the text is cut into pieces with the regex, then BPE runs inside each piece.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# SmolLM2 = HF Digits(individual_digits=True) then GPT-2's regex inside each non-digit piece, as a single regex.
# A digit ends the piece before it, so a whitespace run right before a digit stays whole ("x  1" -> "x", "  ", "1"):
# the lookahead treats a digit like the end of the text.
SMOLLM_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                  r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# llama.cpp's tokenizer.ggml.pre names
GGUF_PRE = {"gpt-2": GPT2_PATTERN, "smollm": SMOLLM_PATTERN, "llama-bpe": LLAMA3_PATTERN, "llama3": LLAMA3_PATTERN,
            "qwen2": QWEN2_PATTERN}

# Llama 3's 256 special tokens, in the order of llama_models/llama3/tokenizer.py, ids from 128000 on.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
LLAMA3_SPECIALS += [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(LLAMA3_SPECIALS))]
LLAMA3_RANKS = 128000

SENTENCEPIECE = ("is a SentencePiece tokenizer (Llama 2 / Mistral v0.1 style), which tiktoken cannot express; "
                 "tokenwise supports byte-level BPE tokenizers only (GPT-2, Llama 3, SmolLM2, Qwen2)")


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 bytes to printable unicode characters (the alphabet of byte-level vocabs)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


BYTE_TO_CHAR = bytes_to_unicode()
# str.translate table from the byte-level alphabet to latin-1 (one char per byte); any other char below 256 maps
# to an unencodable one so that a string outside the alphabet fails loudly instead of decoding to wrong bytes
UNBYTE = {**{i: "\uffff" for i in range(256)}, **{ord(c): chr(b) for b, c in BYTE_TO_CHAR.items()}}


def _unbyte(token, source):
    try:
        return token.translate(UNBYTE).encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{source}: token {token!r} is not a byte-level BPE string; "
                         f"only byte-level BPE tokenizers are supported") from None


def _rebyte(token):
    return "".join(BYTE_TO_CHAR[b] for b in token)


class Tokenizer:
    """A byte-level BPE: ranks (token bytes -> id, lower id merges first), a split regex and special tokens."""

    def __init__(self, ranks, pattern, special_tokens=None, bos_id=None, eos_id=None, add_bos=False,
                 normalizer=None, unk_id=None, name="tokenwise", chat_template=None):
        if normalizer not in (None, "NFC"):
            raise ValueError(f"unsupported normalizer {normalizer!r}: only None and 'NFC' are supported")
        self.ranks, self.pattern, self.special_tokens = ranks, pattern, dict(special_tokens or {})
        self.normalizer, self.unk_id, self.chat_template = normalizer, unk_id, chat_template
        self.n_vocab = max([*ranks.values(), *self.special_tokens.values()]) + 1
        for what, i in (("bos_id", bos_id), ("eos_id", eos_id), ("unk_id", unk_id)):
            if i is not None and not 0 <= i < self.n_vocab:
                raise ValueError(f"{what}={i} is outside the vocabulary (n_vocab={self.n_vocab})")
        if add_bos and bos_id is None:
            raise ValueError("add_bos=True needs a bos_id")
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, bool(add_bos)
        # Some vocabs lack a few single bytes (SmolLM2 lacks 21, mostly control bytes). tiktoken needs every byte,
        # so each missing one gets a placeholder id above the vocab; encode drops it (or maps it to unk_id), which
        # is what Hugging Face's BPE and llama.cpp do with a byte they have no token for.
        holes = [bytes([b]) for b in range(256) if bytes([b]) not in ranks]
        self._holes = {self.n_vocab + k: h for k, h in enumerate(holes)}
        self.enc = tiktoken.Encoding(name, pat_str=pattern, special_tokens=self.special_tokens,
                                     mergeable_ranks={**ranks, **{h: i for i, h in self._holes.items()}})
        h = hashlib.sha256()
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            h.update(len(token).to_bytes(2, "little") + token + rank.to_bytes(4, "little"))
        # bos_id counts only when it is added: it changes no token otherwise
        h.update(json.dumps([sorted(self.special_tokens.items()), pattern, normalizer, unk_id, eos_id,
                             bos_id if self.add_bos else None]).encode())
        self.fingerprint = h.hexdigest()[:16]

    def encode(self, text, bos=False, allow_special=False):
        """Token ids of text. Special-token strings in text are plain text unless allow_special."""
        if bos and self.bos_id is None:
            raise ValueError("this tokenizer has no BOS token; call encode(text, bos=False)")
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        ids = self.enc.encode(text, allowed_special="all") if allow_special else self.enc.encode_ordinary(text)
        if self._holes:
            ids = [i if i < self.n_vocab else self.unk_id for i in ids]
            ids = [i for i in ids if i is not None]
        return [self.bos_id] + ids if bos else ids

    def encode_with_starts(self, text):
        """(ids, starts): encode(text) and the byte offset in text's UTF-8 at which each token starts, so that a
        caller can tell which part of the text a token came from. text must already be normalised (normalizer)."""
        ids, starts, at = [], [], 0
        for i in self.enc.encode_ordinary(text):
            if i < self.n_vocab or self.unk_id is not None:  # a byte the vocab lacks is dropped, as encode does
                ids.append(i if i < self.n_vocab else self.unk_id)
                starts.append(at)
            at += len(self.enc.decode_single_token_bytes(i))
        return ids, starts

    def decode(self, ids):
        return self.enc.decode(ids, errors="replace")

    def id_to_string(self, i):
        """The text of one token as Hugging Face spells it (byte-level string, or the special token's text)."""
        for s, j in self.special_tokens.items():
            if j == i:
                return s
        return _rebyte(self.enc.decode_single_token_bytes(i))

    def merges(self):
        """BPE merges that make Hugging Face's BPE act as tiktoken: tiktoken may merge any two adjacent parts whose
        concatenation is a token, lowest rank first, so every split of every token into two tokens is a merge, ordered
        by the rank of the token it makes (the convention of transformers' TikTokenConverter)."""
        out = []
        for token, rank in sorted(self.ranks.items(), key=lambda kv: kv[1]):
            splits = [(self.ranks[token[:i]], self.ranks[token[i:]], i) for i in range(1, len(token))
                      if token[:i] in self.ranks and token[i:] in self.ranks]
            out += [(token[:i], token[i:]) for _, _, i in sorted(splits)]
        return out

    def save(self, folder):
        """Write tokenizer.json + tokenizer_config.json that transformers' AutoTokenizer loads and that tokenize
        identically (a BPE model with the same ranks and merges, the same split regex, the same specials)."""
        os.makedirs(folder, exist_ok=True)
        added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for s, i in sorted(self.special_tokens.items(), key=lambda x: x[1])]
        if self.add_bos:
            bos = self.id_to_string(self.bos_id)
            post = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {bos: {"id": bos, "ids": [self.bos_id], "tokens": [bos]}}}
        else:
            post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
        unk = None if self.unk_id is None else self.id_to_string(self.unk_id)
        tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
              "normalizer": {"type": self.normalizer} if self.normalizer else None,
              "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                  {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False},
                  {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
              "post_processor": post,
              "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
              "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                        "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                        # specials are in the vocab too: tokenizers ignores an added token's id when the model
                        # lacks it and appends the token at a new id
                        "vocab": dict(sorted([*((_rebyte(t), r) for t, r in self.ranks.items()),
                                              *self.special_tokens.items()], key=lambda kv: kv[1])),
                        "merges": [[_rebyte(a), _rebyte(b)] for a, b in self.merges()]}}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": self.add_bos, "add_eos_token": False,
                  "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30,
                  "bos_token": None if self.bos_id is None else self.id_to_string(self.bos_id),
                  "eos_token": None if self.eos_id is None else self.id_to_string(self.eos_id),
                  "unk_token": unk}
        if self.chat_template:
            config["chat_template"] = self.chat_template
        with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(tj, ensure_ascii=False))  # dumps: json.dump would use the slow pure-Python encoder
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=1)


# -----------------------------------------------------------------------------
# loaders

def _check_merge_order(merges, vocab, source):
    """tiktoken merges by the rank of the merged token, Hugging Face by the merge's position: the two agree when
    the merged tokens' ids never decrease along the merges list. merges: 'a b' strings or [a, b] pairs of byte-level
    strings; vocab: byte-level string -> id."""
    last = -1
    for k, m in enumerate(merges):
        a, b = m if isinstance(m, (list, tuple)) else m.split(" ")
        r = vocab.get(a + b)
        if r is None:
            raise ValueError(f"{source}: merge #{k} {a!r} + {b!r} makes a token not in the vocab")
        if r < last:
            raise ValueError(f"{source}: merge #{k} {a!r} + {b!r} makes id {r}, below the previous merge's id {last}; "
                             f"tiktoken (which merges by id) cannot reproduce this vocab")
        last = r


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download or re-export the tokenizer") from None


def _folder_chat_template(folder):
    """The chat template of a HF folder: chat_template.jinja (transformers >= 4.43 saves it there) or
    tokenizer_config.json's chat_template (a string, or named templates of which 'default' is the chat one)."""
    path = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    path = os.path.join(folder, "tokenizer_config.json")
    template = _read_json(path).get("chat_template") if os.path.isfile(path) else None
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    return template if isinstance(template, str) else None


def _folder_specials(folder, lookup):
    """(bos_id, eos_id, add_bos) as the folder's tokenizer_config.json / generation_config.json / config.json state
    them, None where none says; earlier files win."""
    bos = eos = add_bos = None

    def first(v):
        return v[0] if isinstance(v, list) and v else v

    path = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(path):
        tc = _read_json(path)
        for key in ("bos_token", "eos_token"):
            tok = tc.get(key)
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if tok is not None:
                if lookup(tok) is None:
                    raise ValueError(f"{path}: {key} {tok!r} is not in the vocabulary")
                bos, eos = (lookup(tok), eos) if key == "bos_token" else (bos, lookup(tok))
        add_bos = tc.get("add_bos_token")
    for name in ("generation_config.json", "config.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            c = _read_json(path)
            bos = bos if bos is not None else first(c.get("bos_token_id"))
            eos = eos if eos is not None else first(c.get("eos_token_id"))
    return bos, eos, add_bos


def _from_tokenizer_json(path):
    folder = os.path.dirname(os.path.abspath(path))
    tj = _read_json(path)
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        raise ValueError(f"{path} has no 'model' section; it is not a Hugging Face tokenizer.json")
    model, pre = tj["model"], tj.get("pre_tokenizer")
    steps = (pre.get("pretokenizers") or []) if pre and pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") if s else None for s in steps]
    if model.get("type") == "Unigram" or model.get("byte_fallback") or "Metaspace" in kinds:
        raise ValueError(f"{path} {SENTENCEPIECE}")
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: model type {model.get('type')!r} is not supported; only byte-level BPE is")
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise ValueError(f"{path}: BPE with {key}={model[key]!r} is not supported")
    if any(s.get("type") == "ByteLevel" and s.get("add_prefix_space") for s in steps if s):
        raise ValueError(f"{path}: ByteLevel(add_prefix_space=True) is not supported; set it to false")
    use_regex = [s.get("use_regex", True) for s in steps if s and s.get("type") == "ByteLevel"]
    if kinds == ["ByteLevel"] and use_regex == [True]:
        pattern = GPT2_PATTERN
    elif kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and use_regex == [True]:
        pattern = SMOLLM_PATTERN
    elif (kinds == ["Split", "ByteLevel"] and use_regex == [False] and "Regex" in steps[0].get("pattern", {})
          and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")):
        pattern = steps[0]["pattern"]["Regex"]
    else:
        raise ValueError(f"{path}: pre-tokenizer {kinds} is not supported; supported: ByteLevel (GPT-2), "
                         f"Digits+ByteLevel (SmolLM2), Split(regex, Isolated)+ByteLevel(use_regex=false)")
    norm = tj.get("normalizer")
    if norm is not None and norm.get("type") != "NFC":
        raise ValueError(f"{path}: normalizer {norm.get('type')!r} is not supported (only none or NFC)")
    specials = {t["content"]: t["id"] for t in tj.get("added_tokens") or []}
    special_ids = set(specials.values())
    ranks = {_unbyte(t, path): i for t, i in model["vocab"].items() if i not in special_ids}
    _check_merge_order(model.get("merges") or [], model["vocab"], path)
    vocab = {**model["vocab"], **specials}
    bos, eos, add_bos = _folder_specials(folder, vocab.get)
    post = tj.get("post_processor") or {}
    posts = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    template = [p for p in posts if p.get("type") == "TemplateProcessing"]
    lead = template[0]["single"][0] if template else {}
    if "SpecialToken" in lead:  # the template that prepends BOS
        add_bos = True if add_bos is None else add_bos
        bos = bos if bos is not None else vocab.get(lead["SpecialToken"]["id"])
    if eos is None and "<|endoftext|>" in specials:
        eos = specials["<|endoftext|>"]
    unk = model.get("unk_token")
    return Tokenizer(ranks, pattern, specials, bos, eos, bool(add_bos), norm and norm["type"],
                     None if unk is None else vocab.get(unk), name=os.path.basename(folder),
                     chat_template=_folder_chat_template(folder))


def _from_gpt2_files(encoder_path, merges_path):
    """GPT-2's encoder.json (token -> id) + vocab.bpe (merges, one 'a b' per line after a #version header)."""
    folder = os.path.dirname(os.path.abspath(encoder_path))
    encoder = _read_json(encoder_path)
    with open(merges_path, encoding="utf-8") as f:
        merges = [line.split(" ") for line in f.read().split("\n") if line and not line.startswith("#version")]
    made = {a + b for a, b in merges}
    # entries that are neither single bytes nor made by a merge are the special tokens (<|endoftext|>)
    specials = {t: i for t, i in encoder.items() if len(t) > 1 and t not in made}
    ranks = {_unbyte(t, encoder_path): i for t, i in encoder.items() if t not in specials}
    _check_merge_order(merges, encoder, merges_path)
    bos, eos, add_bos = _folder_specials(folder, encoder.get)
    eos = eos if eos is not None else specials.get("<|endoftext|>")
    return Tokenizer(ranks, GPT2_PATTERN, specials, bos, eos, bool(add_bos), name="gpt2",
                     chat_template=_folder_chat_template(folder))


def _from_tiktoken_model(path):
    """Llama 3's tokenizer.model: one 'base64(token) rank' per line; a protobuf here means SentencePiece."""
    with open(path, "rb") as f:
        data = f.read()
    ranks = {}
    try:
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except ValueError:
        raise ValueError(f"{path} is not a tiktoken BPE file; it {SENTENCEPIECE}") from None
    if len(ranks) != LLAMA3_RANKS:
        raise ValueError(f"{path}: a tiktoken file with {len(ranks)} ranks; only Llama 3's ({LLAMA3_RANKS}) is known, "
                         f"so its special tokens cannot be named; use the model's tokenizer.json instead")
    specials = {s: LLAMA3_RANKS + i for i, s in enumerate(LLAMA3_SPECIALS)}
    folder = os.path.dirname(os.path.abspath(path))
    lookup = {**{_rebyte(t): i for t, i in ranks.items()}, **specials}.get
    bos, eos, add_bos = _folder_specials(folder, lookup)
    bos = specials["<|begin_of_text|>"] if bos is None else bos
    eos = specials["<|end_of_text|>"] if eos is None else eos
    return Tokenizer(ranks, LLAMA3_PATTERN, specials, bos, eos, True if add_bos is None else add_bos, name="llama3",
                     chat_template=_folder_chat_template(folder))


def tokenizer_from_gguf(reader):
    """The tokenizer in a GGUF file's metadata (reader: an open gguf.GGUFReader)."""
    def field(key, default=None):
        return reader.fields[key].contents() if key in reader.fields else default

    source = getattr(reader, "path", "GGUF file")
    kind = field("tokenizer.ggml.model")
    if kind == "llama":
        raise ValueError(f"{source} {SENTENCEPIECE}")
    if kind != "gpt2":
        raise ValueError(f"{source}: tokenizer.ggml.model={kind!r} is not supported; only 'gpt2' (byte-level BPE) is")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE:
        raise ValueError(f"{source}: tokenizer.ggml.pre={pre!r} is not supported; known: {sorted(GGUF_PRE)}")
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    if not tokens or not types or len(tokens) != len(types):
        raise ValueError(f"{source}: tokenizer.ggml.tokens / token_type are missing or of different lengths")
    # token_type 3 = control, 4 = user-defined: matched as whole strings, as Hugging Face's added tokens
    specials = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)}
    ranks = {_unbyte(t, source): i for i, (t, ty) in enumerate(zip(tokens, types)) if ty not in (3, 4)}
    _check_merge_order(field("tokenizer.ggml.merges", []), {t: i for i, t in enumerate(tokens)}, source)
    return Tokenizer(ranks, GGUF_PRE[pre], specials, field("tokenizer.ggml.bos_token_id"),
                     field("tokenizer.ggml.eos_token_id"), field("tokenizer.ggml.add_bos_token", False),
                     name=f"gguf-{pre}", chat_template=field("tokenizer.chat_template"))


def load_tokenizer(path):
    """The tokenizer of a checkpoint: a HF / tokenwise folder, a .gguf file, or a tokenizer file itself."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer path {path!r} does not exist")
    if os.path.isfile(path):
        if path.endswith(".gguf"):
            import gguf
            return tokenizer_from_gguf(gguf.GGUFReader(path))
        if path.endswith(".json"):
            return _from_tokenizer_json(path)
        if path.endswith(".model"):
            return _from_tiktoken_model(path)
        raise ValueError(f"{path}: unknown tokenizer file; give a folder, a .gguf, a tokenizer.json or a tokenizer.model")
    has = lambda name: os.path.isfile(os.path.join(path, name))
    if has("tokenizer.json"):
        return _from_tokenizer_json(os.path.join(path, "tokenizer.json"))
    for encoder, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if has(encoder) and has(merges):
            return _from_gpt2_files(os.path.join(path, encoder), os.path.join(path, merges))
    for name in ("tokenizer.model", os.path.join("original", "tokenizer.model")):
        if has(name):
            return _from_tiktoken_model(os.path.join(path, name))
    ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
    if len(ggufs) == 1:
        return load_tokenizer(os.path.join(path, ggufs[0]))
    raise FileNotFoundError(f"no tokenizer in {path}: expected tokenizer.json, encoder.json + vocab.bpe, vocab.json + "
                            f"merges.txt, tokenizer.model or one .gguf file")
