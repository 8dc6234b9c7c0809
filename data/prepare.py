"""
Tokenize an SFT dataset with a model's tokenizer, with a loss mask on the response tokens only.

    python data/prepare.py --dataset=gsm8k --init_from=smollm2-gguf
    python data/prepare.py --dataset=my.jsonl --prompt_field=instruction --response_field=output --init_from=gpt2
    python data/prepare.py --dataset=chats.jsonl --init_from=smollm2-gguf     # 'messages' data, rendered as ChatML

Writes <out>/{train,val}.ids.bin (uint32), .mask.bin (uint8, 1 = supervised target), .offsets.npy (int64 example
boundaries) and meta.json. Default out: data/<dataset>/<tokenizer fingerprint>/.
Prompt/response data: text = prompt_template + response_template + EOS, by default
"Question: {prompt}\nAnswer:" + " {response}" + EOS, the format of the GSM8K evaluation prompt; the loss covers the
response and EOS. Chat data: ChatML turns; the loss covers each assistant turn's content and its <|im_end|>.
Examples longer than block_size + 1 tokens are clipped at the end (the prompt survives, the end of the response and
EOS are lost); they are counted in meta.json and printed.
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python data/prepare.py` puts data/ first on the path, not the repo root
from tokenizer import load_tokenizer  # noqa: E402

GSM8K_DIR = os.path.join(ROOT, "data", "gsm8k")  # train/test.jsonl.gz shipped with the repo (MIT, see its README)
PROMPT_TEMPLATE, RESPONSE_TEMPLATE = "Question: {prompt}\nAnswer:", " {response}"
VAL_NAMES = ("val", "validation", "test")
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


def encode_chat(tokenizer, messages):
    """(ids, mask) of ChatML turns "<|im_start|>{role}\\n{content}<|im_end|>\\n"; supervised: each assistant turn's
    content and its <|im_end|> (what the model must produce, including where to stop)."""
    start, end = tokenizer.special_tokens["<|im_start|>"], tokenizer.special_tokens["<|im_end|>"]
    ids, mask = ([tokenizer.bos_id], [0]) if tokenizer.add_bos else ([], [])
    newline = tokenizer.encode("\n")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"a chat message must be {{'role': str, 'content': str}}, got {str(m)[:80]!r}")
        head = [start] + tokenizer.encode(m["role"] + "\n")
        body = tokenizer.encode(m["content"]) + [end]
        on = int(m["role"] == "assistant")
        ids += head + body + newline
        mask += [0] * len(head) + [on] * len(body) + [0] * len(newline)
    return ids, mask


def tokenize(records, tokenizer, block_size, fmt, where):
    """Flat ids, mask, offsets and counts for one split."""
    ids, mask, offsets = [], [], [0]
    truncated = unsupervised = 0
    for k, rec in enumerate(records):
        if fmt["kind"] == "chat":
            messages = rec.get(fmt["messages_field"])
            if not isinstance(messages, list):
                raise ValueError(f"{where} record {k}: '{fmt['messages_field']}' is not a list of messages")
            x, m = encode_chat(tokenizer, messages)
        else:
            fields = []
            for f in (fmt["prompt_field"], fmt["response_field"]):
                if f not in rec:
                    raise ValueError(f"{where} record {k} has no field {f!r}; available: {', '.join(map(str, rec))}")
                fields.append(str(rec[f]))
            x, m = encode_pair(tokenizer, fmt["prompt_template"].format(prompt=fields[0]),
                               fmt["response_template"].format(response=fields[1]))
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


def detect_format(record, where, prompt_field, response_field, messages_field, prompt_template, response_template):
    if prompt_field or response_field:
        if not (prompt_field and response_field):
            raise ValueError("pass both --prompt_field and --response_field")
        return dict(kind="pair", prompt_field=prompt_field, response_field=response_field,
                    prompt_template=prompt_template, response_template=response_template)
    if messages_field in record:
        return dict(kind="chat", messages_field=messages_field)
    raise ValueError(f"{where}: records have fields {', '.join(map(str, record))}; pass --prompt_field and "
                     f"--response_field, or give chat data with a {messages_field!r} field")


def prepare(dataset, tokenizer, out_dir=None, block_size=1024, prompt_field=None, response_field=None,
            messages_field="messages", prompt_template=PROMPT_TEMPLATE, response_template=RESPONSE_TEMPLATE):
    """Tokenize dataset into out_dir (default data/<dataset>/<fingerprint>/) and return out_dir. A folder already
    prepared with the same settings is reused."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if tokenizer.eos_id is None:
        raise ValueError("the tokenizer has no EOS token; SFT targets end with EOS so the model learns to stop")
    if dataset == "gsm8k" and not (prompt_field or response_field):
        prompt_field, response_field = "question", "answer"
    name = os.path.splitext(os.path.basename(os.path.normpath(dataset)))[0].replace(" ", "_") or "dataset"
    out_dir = out_dir or os.path.join(ROOT, "data", name, tokenizer.fingerprint)
    settings = dict(tokenizer=tokenizer.fingerprint, dataset=dataset, files=stamp(dataset), block_size=block_size,
                    prompt_field=prompt_field, response_field=response_field, messages_field=messages_field,
                    prompt_template=prompt_template, response_template=response_template)
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
    fmt = detect_format(train[0], source, prompt_field, response_field, messages_field, prompt_template,
                        response_template)
    if fmt["kind"] == "chat" and not {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.special_tokens):
        raise ValueError(f"{source} is chat data ('{messages_field}') but the tokenizer has no <|im_start|>/<|im_end|> "
                         f"special tokens to render ChatML; use a chat model's tokenizer or prompt/response fields")

    # tokenize everything before writing anything: a bad record fails the run without leaving a partial folder
    done = {split: tokenize(records, tokenizer, block_size, fmt, f"{source} ({split})")
            for split, records in (("train", train), ("val", val))}
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(settings, source=source, format=fmt["kind"], truncation="clip the end to block_size + 1 tokens",
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
    ap.add_argument("--messages_field", default="messages")
    ap.add_argument("--prompt_template", default=PROMPT_TEMPLATE)
    ap.add_argument("--response_template", default=RESPONSE_TEMPLATE)
    a = ap.parse_args(argv)
    from model import resolve_checkpoint  # aliases ('smollm2-gguf') and hub names -> a local path
    prepare(a.dataset, load_tokenizer(resolve_checkpoint(a.init_from)), a.out_dir, a.block_size, a.prompt_field, a.response_field,
            a.messages_field, a.prompt_template, a.response_template)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        sys.exit(f"error: {e}")
