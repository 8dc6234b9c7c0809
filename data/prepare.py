"""
Tokenize an SFT dataset with a model's tokenizer, with a loss mask on the response tokens only.

    python data/prepare.py --dataset=gsm8k --init_from=smollm2-gguf
    python data/prepare.py --dataset=my.jsonl --prompt_field=instruction --response_field=output --init_from=gpt2
    python data/prepare.py --dataset=chats.jsonl --init_from=smollm2-gguf     # 'messages', the model's chat template

Writes <out>/{train,val}.ids.bin (uint32), .mask.bin (uint8, 1 = supervised target), .offsets.npy (int64 example
boundaries) and meta.json. Default out: data/<dataset>/<tokenizer fingerprint>/.
The fields are found by name (FORMATS: TRL's prompt/completion and messages, ShareGPT's conversations,
problem/solution, query/response, Alpaca's instruction/input/output, question/answer) unless given.
Prompt/response data: text = prompt_template + response_template + EOS, by default
"Question: {prompt}\nAnswer:" + " {response}" + EOS, the format of the GSM8K evaluation prompt; the loss covers the
response and EOS. With pair_chat the pair is a chat instead ([system_prompt,] user, assistant), as verl's and TRL's
SFT datasets render prompt/response data. Chat data is rendered with the model's own chat template (ChatML where the
model has none); the loss covers each assistant turn's content and its end-of-turn token (encode_chat).
Examples longer than block_size + 1 tokens are clipped at the end (the prompt survives, the end of the response and
EOS are lost); they are counted in meta.json and printed.
"""
import argparse
import bisect
import gzip
import hashlib
import itertools
import json
import os
import re
import sys
import unicodedata
from datetime import datetime

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python data/prepare.py` puts data/ first on the path, not the repo root
from tokenizer import load_tokenizer  # noqa: E402

GSM8K_DIR = os.path.join(ROOT, "data", "gsm8k")  # train/test.jsonl.gz shipped with the repo (MIT, see its README)
PROMPT_TEMPLATE, RESPONSE_TEMPLATE = "Question: {prompt}\nAnswer:", " {response}"
VAL_NAMES = ("val", "validation", "test")
# ChatML, for models without a chat template of their own (as SmolLM2 and Qwen2 render it, without a default system)
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Field conventions recognised without --prompt_field/--response_field, first match wins: (prompt fields joined by a
# newline when non-empty, as LLaMA-Factory's Alpaca converter joins instruction and input; response field).
FORMATS = [(("prompt",), "completion"), (("problem",), "solution"), (("query",), "response"),
           (("instruction", "input"), "output"), (("question",), "answer")]
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet")


# -----------------------------------------------------------------------------
# reading records

def read_file(path):
    """Records (dicts) of a local .jsonl / .json / .parquet file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file {path} does not exist")
    if path.endswith(".parquet"):
        import pyarrow.parquet
        return pyarrow.parquet.read_table(path).to_pylist()
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith(".json") and text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON / JSON lines ({e})") from None
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: every record must be a JSON object")
    return records


def split_file(folder, names):
    for name in names:
        for ext in EXTENSIONS:
            if os.path.isfile(os.path.join(folder, name + ext)):
                return os.path.join(folder, name + ext)
    return None


def holdout(records, val_fraction=0.05, seed=0):
    """A fixed random split for data that ships one file: val_fraction of the examples (at least one) held out."""
    order = np.random.RandomState(seed).permutation(len(records))
    n_val = max(1, int(round(len(records) * val_fraction))) if len(records) > 1 else 0
    return [records[i] for i in sorted(order[n_val:])], [records[i] for i in sorted(order[:n_val])]


def gsm8k(split):
    """GSM8K's 'train' or 'test' records (question, answer) from the copy shipped in data/gsm8k/."""
    return read_file(os.path.join(GSM8K_DIR, f"{split}.jsonl.gz"))


def load_records(dataset):
    """(train records, val records, source) from 'gsm8k', a local file or folder, or a hub dataset name."""
    if dataset == "gsm8k":
        dataset = GSM8K_DIR
    if os.path.isdir(dataset):
        train, val = split_file(dataset, ("train",)), split_file(dataset, VAL_NAMES)
        if train is None:
            raise FileNotFoundError(f"no train{{{','.join(EXTENSIONS)}}} in {dataset}")
        if val is None:
            return (*holdout(read_file(train)), os.path.abspath(dataset))
        return read_file(train), read_file(val), os.path.abspath(dataset)
    if os.path.exists(dataset) or dataset.startswith((".", "/", "~")) or dataset.endswith(EXTENSIONS):
        return (*holdout(read_file(dataset)), os.path.abspath(dataset))
    return (*load_hub(dataset), f"hub:{dataset}")


def stamp(dataset):
    """Size and mtime of a local dataset's files, so that a prepared folder is not reused after they change."""
    path = GSM8K_DIR if dataset == "gsm8k" else dataset
    if os.path.isfile(path):
        files = [path]
    elif os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(EXTENSIONS))
    else:
        return None
    return [[os.path.basename(f), os.path.getsize(f), os.path.getmtime(f)] for f in files]


def load_hub(name, config=None):
    import datasets
    try:
        d = datasets.load_dataset(name, config)
    except Exception as e:
        raise ConnectionError(f"could not load dataset {name!r} from the hub ({type(e).__name__}: {e}); without a "
                           f"network pass a local .jsonl/.json/.parquet file or a folder with train/test files") from None
    if "train" not in d:
        raise ValueError(f"hub dataset {name!r} has no train split (splits: {', '.join(d)})")
    val = next((s for s in VAL_NAMES if s in d), None)
    if val is None:
        return holdout(list(d["train"]))
    return list(d["train"]), list(d[val])


# -----------------------------------------------------------------------------
# tokenizing with masks

def encode_pair(tokenizer, prompt, response):
    """(ids, mask): prompt (BOS first if the model expects it) unsupervised, response + EOS supervised.
    Prompt and response are tokenized separately and concatenated so the mask boundary is exact: tokenizing the
    joined text could make a token that straddles the boundary. With the default templates the boundary ("Answer:"
    then " ...") is a split-regex boundary anyway, so the ids equal those of the joined text."""
    p = tokenizer.encode(prompt, bos=tokenizer.add_bos)
    r = tokenizer.encode(response) + [tokenizer.eos_id]
    return p + r, [0] * len(p) + [1] * len(r)


def compile_template(source):
    """A chat template compiled as transformers compiles it (utils/chat_template_utils.py): a sandboxed environment
    (templates come from the hub: they must not reach Python's internals), trim_blocks and lstrip_blocks, the loop
    controls, and the helpers templates call (raise_exception, strftime_now, a tojson that does not escape HTML)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the chat template does not compile: {e} (line {e.lineno})") from None


class ChatEncoder:
    """Renders chats with a chat template and tokenizes them with a mask on what the assistant says.

    How the assistant spans are found: each chat is rendered twice, once as it is and once with every message's
    content replaced by a numbered sentinel (private-use characters, which no template tests or changes). Cut at the
    sentinels, the second rendering gives the template's own text between the contents; putting the real contents
    back (as they are, or stripped, for templates that trim them, as Llama 3's does) must give the first rendering
    character for character, or the record is refused. So every content's span is known exactly, whatever the
    template adds around or between turns (default system prompts, BOS, dates, empty think blocks), without parsing
    the template. Supervised: each assistant content and the template's text after it up to and including the first
    special token (its end of turn: <|im_end|>, <|eot_id|>, EOS), what the model must write to end its turn.

    Tokens: the text between special tokens is tokenized whole, as transformers tokenizes the rendered chat, so the ids
    equal apply_chat_template(tokenize=True)'s; a token is supervised when its first byte is. Special-token strings
    are special only where the template writes them: inside a message they stay text, tokenized with the text around
    them, so a message cannot forge a turn boundary (transformers makes them control tokens, unless
    sanitize_control_tokens=True, which also tokenizes them apart from their neighbours)."""
    SENTINEL = re.compile("\ue000(\\d+)\ue001")

    def __init__(self, tokenizer, template):
        self.tok, self.template = tokenizer, compile_template(template)
        specials = sorted(tokenizer.special_tokens, key=len, reverse=True)  # longest first: no prefix wins
        self.specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        names = dict(bos_token=tokenizer.bos_id, eos_token=tokenizer.eos_id, unk_token=tokenizer.unk_id)
        self.names = {k: tokenizer.id_to_string(i) for k, i in names.items() if i is not None}

    def render(self, messages):
        import jinja2
        try:
            return self.template.render(messages=messages, add_generation_prompt=False, **self.names)
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"the chat template refused this chat: {e}") from None

    def pieces(self, messages):
        """[(text, kind)] with kind 'template', 'content' or 'assistant', in order, that join to the rendering."""
        real = self.render(messages)
        marked = self.render([dict(m, content=f"\ue000{k}\ue001") for k, m in enumerate(messages)])
        cut = self.SENTINEL.split(marked)  # template, index, template, index, ..., template
        shown = [int(k) for k in cut[1::2]]
        if len(set(shown)) != len(shown):
            raise ValueError("the chat template renders a message's content twice; its spans are ambiguous")
        for fix in (lambda c: c, str.strip):
            contents = [fix(messages[k]["content"]) for k in shown]
            if "".join(t + c for t, c in zip(cut[::2], contents + [""])) == real:
                break
        else:
            raise ValueError("the chat template changes message contents beyond trimming them (or branches on "
                             "them, e.g. on '</think>'), so the assistant spans cannot be located")
        out = [(cut[0], "template")]
        for k, c, t in zip(shown, contents, cut[2::2]):
            out += [(c, "assistant" if messages[k]["role"] == "assistant" else "content"), (t, "template")]
        return out

    def encode(self, messages):
        """(ids, mask) of one chat: see the class docstring."""
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"a chat message must be {{'role': str, 'content': str}}, got {str(m)[:80]!r}")
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]  # as transformers does
        ids, mask, run, ending = [], [], [], False  # run: (text, supervised) parts before the next special token
        for text, kind in self.pieces(messages):
            if kind != "template":
                if ending:
                    break  # an assistant turn without an end token: refused below
                run.append((text, kind == "assistant"))
                ending = kind == "assistant"
                continue
            for k, part in enumerate(self.specials.split(text) if self.specials else [text]):
                if k % 2 == 0:
                    run.append((part, ending))
                    continue
                self._flush(run, ids, mask)
                run = []
                ids.append(self.tok.special_tokens[part])
                mask.append(int(ending))
                ending = False
        if ending:
            raise ValueError("the chat template puts no special token after an assistant turn, so the model could "
                             "not learn to end it; give a template that ends turns with one (or EOS)")
        self._flush(run, ids, mask)
        return ids, mask

    def _flush(self, run, ids, mask):
        """Tokenize the parts of one run of ordinary text whole; each token takes the flag of the part it starts in."""
        if self.tok.normalizer:
            run = [(unicodedata.normalize(self.tok.normalizer, t), f) for t, f in run]
        ends = list(itertools.accumulate(len(t.encode()) for t, _ in run))
        run_ids, starts = self.tok.encode_with_starts("".join(t for t, _ in run))
        ids += run_ids
        mask += [int(run[bisect.bisect_right(ends, b)][1]) for b in starts]


def sharegpt(conversation):
    """ShareGPT's [{'from': 'human', 'value': ...}] as messages."""
    try:
        return [{"role": SHAREGPT_ROLES[turn["from"]], "content": turn["value"]} for turn in conversation]
    except (KeyError, TypeError):
        raise ValueError(f"a ShareGPT turn must be {{'from': {'|'.join(SHAREGPT_ROLES)}, 'value': str}}, "
                         f"got {str(conversation)[:80]!r}") from None


def detect_format(record, where, prompt_field, response_field, messages_field):
    """What to read from each record: the fields given, else the first convention of FORMATS the record has."""
    if prompt_field or response_field:
        if not (prompt_field and response_field):
            raise ValueError("pass both --prompt_field and --response_field")
        return dict(kind="pair", prompt_fields=[prompt_field], response_field=response_field)
    if messages_field:
        return dict(kind="chat", messages_field=messages_field)
    if isinstance(record.get("messages"), list):
        return dict(kind="chat", messages_field="messages")
    if isinstance(record.get("conversations"), list):
        return dict(kind="sharegpt", messages_field="conversations")
    if isinstance(record.get("prompt"), list) and isinstance(record.get("completion"), list):
        return dict(kind="trl_chat")  # TRL's conversational prompt/completion: lists of messages
    for prompts, response in FORMATS:
        if prompts[0] in record and response in record:
            return dict(kind="pair", prompt_fields=[f for f in prompts if f in record], response_field=response)
    known = ", ".join(["messages", "conversations"] + ["/".join(p + (r,)) for p, r in FORMATS])
    raise ValueError(f"{where}: records have fields {', '.join(map(str, record))}, none of the known formats "
                     f"({known}); pass --prompt_field and --response_field, or --messages_field")


def example(rec, fmt):
    """('pair', prompt, response) or ('chat', messages) of one record."""
    if fmt["kind"] == "pair":
        for f in fmt["prompt_fields"] + [fmt["response_field"]]:
            if f not in rec:
                raise ValueError(f"no field {f!r}; available: {', '.join(map(str, rec))}")
        prompt = "\n".join(str(rec[f]) for f in fmt["prompt_fields"] if rec[f] not in (None, ""))
        return "pair", prompt, str(rec[fmt["response_field"]])
    if fmt["kind"] == "trl_chat":
        return "chat", list(rec["prompt"]) + list(rec["completion"])
    messages = rec.get(fmt["messages_field"])
    if not isinstance(messages, list):
        raise ValueError(f"'{fmt['messages_field']}' is not a list of messages")
    return "chat", sharegpt(messages) if fmt["kind"] == "sharegpt" else messages


def tokenize(records, tokenizer, block_size, fmt, where, text):
    """Flat ids, mask, offsets and counts for one split. text: the templates and the chat encoder (prepare)."""
    ids, mask, offsets = [], [], [0]
    truncated = unsupervised = 0
    for k, rec in enumerate(records):
        try:
            ex = example(rec, fmt)
            if ex[0] == "pair" and text["pair_chat"]:
                system = [{"role": "system", "content": text["system_prompt"]}] if text["system_prompt"] else []
                ex = "chat", system + [{"role": "user", "content": text["prompt_template"].format(prompt=ex[1])},
                                       {"role": "assistant", "content": text["response_template"].format(response=ex[2])}]
            if ex[0] == "chat":
                x, m = text["chat"].encode(ex[1])
            else:
                x, m = encode_pair(tokenizer, text["prompt_template"].format(prompt=ex[1]),
                                   text["response_template"].format(response=ex[2]))
        except ValueError as e:
            raise ValueError(f"{where} record {k}: {e}") from None
        if len(x) > block_size + 1:  # block_size inputs + 1 shifted target
            x, m = x[:block_size + 1], m[:block_size + 1]
            truncated += 1
        unsupervised += not any(m[1:])
        ids += x
        mask += m
        offsets.append(len(ids))
    arrays = (np.array(ids, dtype=np.uint32), np.array(mask, dtype=np.uint8), np.array(offsets, dtype=np.int64))
    counts = dict(examples=len(records), tokens=len(ids), supervised=int(arrays[1].sum()), truncated=truncated,
                  unsupervised=unsupervised)
    return arrays, counts


def read_chat_template(chat_template, tokenizer):
    """(template source, where it came from): a .jinja file given, else the model's own, else ChatML."""
    if chat_template:
        if not os.path.isfile(chat_template):
            raise FileNotFoundError(f"chat template file {chat_template} does not exist")
        with open(chat_template, encoding="utf-8") as f:
            return f.read(), chat_template
    if tokenizer.chat_template:
        return tokenizer.chat_template, "the model's"
    return CHATML, "ChatML"


def prepare(dataset, tokenizer, out_dir=None, block_size=1024, prompt_field=None, response_field=None,
            messages_field=None, prompt_template=PROMPT_TEMPLATE, response_template=RESPONSE_TEMPLATE,
            chat_template=None, pair_chat=False, system_prompt=""):
    """Tokenize dataset into out_dir (default data/<dataset>/<fingerprint>/) and return out_dir. A folder already
    prepared with the same settings is reused. chat_template: a .jinja file; None = the model's own (ChatML if it
    has none). pair_chat: prompt/response pairs become a [system_prompt,] user, assistant chat."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if tokenizer.eos_id is None:
        raise ValueError("the tokenizer has no EOS token; SFT targets end with EOS so the model learns to stop")
    if dataset == "gsm8k" and not (prompt_field or response_field):
        prompt_field, response_field = "question", "answer"
    template, template_source = read_chat_template(chat_template, tokenizer)
    name = os.path.splitext(os.path.basename(os.path.normpath(dataset)))[0].replace(" ", "_") or "dataset"
    out_dir = out_dir or os.path.join(ROOT, "data", name, tokenizer.fingerprint)
    settings = dict(tokenizer=tokenizer.fingerprint, dataset=dataset, files=stamp(dataset), block_size=block_size,
                    prompt_field=prompt_field, response_field=response_field, messages_field=messages_field,
                    prompt_template=prompt_template, response_template=response_template, pair_chat=pair_chat,
                    system_prompt=system_prompt, chat_template=hashlib.sha256(template.encode()).hexdigest()[:16])
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if all(meta.get(k) == v for k, v in settings.items()):
            print(f"{out_dir}: already prepared with these settings, reusing it")
            return out_dir

    train, val, source = load_records(dataset)
    for split, records in (("train", train), ("val", val)):
        if not records:
            raise ValueError(f"dataset {dataset} has no {split} examples")
    fmt = detect_format(train[0], source, prompt_field, response_field, messages_field)
    chat = fmt["kind"] != "pair" or pair_chat
    if chat and template_source == "ChatML" and not {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.special_tokens):
        raise ValueError(f"{source} is chat data but the model has no chat template and its tokenizer no "
                         f"<|im_start|>/<|im_end|> special tokens to render ChatML; give --chat_template=<.jinja file>, "
                         f"a chat model, or prompt/response fields")
    text = dict(prompt_template=prompt_template, response_template=response_template, pair_chat=pair_chat,
                system_prompt=system_prompt, chat=ChatEncoder(tokenizer, template) if chat else None)
    print(f"{source}: {fmt['kind']} records" + (f", rendered with {template_source} chat template" if chat else ""))

    # tokenize everything before writing anything: a bad record fails the run without leaving a partial folder
    done = {split: tokenize(records, tokenizer, block_size, fmt, f"{source} ({split})", text)
            for split, records in (("train", train), ("val", val))}
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(settings, source=source, format="chat" if chat else "pair", truncation="clip the end to block_size + 1 tokens",
                bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, add_bos=tokenizer.add_bos, splits={})
    for split, ((ids, mask, offsets), counts) in done.items():
        ids.tofile(os.path.join(out_dir, f"{split}.ids.bin"))
        mask.tofile(os.path.join(out_dir, f"{split}.mask.bin"))
        np.save(os.path.join(out_dir, f"{split}.offsets.npy"), offsets)
        meta["splits"][split] = counts
        print(f"{split}: {counts['examples']:,} examples, {counts['tokens']:,} tokens, "
              f"{counts['supervised']:,} supervised")
        if counts["truncated"]:
            print(f"{split}: {counts['truncated']:,} examples longer than block_size + 1 = {block_size + 1} tokens "
                  f"were clipped at the end")
        if counts["unsupervised"]:
            print(f"{split}: {counts['unsupervised']:,} examples have no supervised token (training skips them)")
    with open(meta_path, "w") as f:  # written last: a folder with meta.json is complete
        json.dump(meta, f, indent=1)
    print(f"wrote {out_dir}")
    return out_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description="Tokenize an SFT dataset with response-only loss masks.")
    ap.add_argument("--dataset", default="gsm8k", help="gsm8k, a local .jsonl/.json/.parquet file or folder, or a hub name")
    ap.add_argument("--init_from", required=True, help="the model whose tokenizer to use (path, .gguf, hub name, alias)")
    ap.add_argument("--block_size", type=int, default=1024)
    ap.add_argument("--out_dir", default=None)
    ap.add_argument("--prompt_field", default=None)
    ap.add_argument("--response_field", default=None)
    ap.add_argument("--messages_field", default=None, help="default: found by name (FORMATS)")
    ap.add_argument("--prompt_template", default=PROMPT_TEMPLATE)
    ap.add_argument("--response_template", default=RESPONSE_TEMPLATE)
    ap.add_argument("--chat_template", default=None, help="a .jinja file; default: the model's own, else ChatML")
    ap.add_argument("--pair_chat", action="store_true", help="render prompt/response pairs as a one-turn chat")
    ap.add_argument("--system_prompt", default="", help="with --pair_chat: a system message first")
    a = ap.parse_args(argv)
    from checkpoints import resolve_checkpoint  # aliases ('smollm2-gguf') and hub names -> a local path
    prepare(a.dataset, load_tokenizer(resolve_checkpoint(a.init_from)), a.out_dir, a.block_size, a.prompt_field,
            a.response_field, a.messages_field, a.prompt_template, a.response_template, a.chat_template, a.pair_chat,
            a.system_prompt)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
