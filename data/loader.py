"""
The training data as train.py reads it: the splits data/prepare.py wrote (memmaps of token ids, loss masks and
example offsets), micro-batches of examples bucketed by length, and the prior signals of the frozen initial model
cached beside them.
"""
import hashlib
import os

import numpy as np
import torch

import weights


def load_split(folder, split, block_size, limit=0):
    """Examples [a, b) of one split with at least one supervised target, cropped to block_size inputs."""
    paths = {s: os.path.join(folder, f'{split}.{s}') for s in ('ids.bin', 'mask.bin', 'offsets.npy')}
    for path in paths.values():
        if not os.path.exists(path):
            raise SystemExit(f"missing {path}: prepare the data with data/prepare.py (or fix --data_dir)")
    offsets = np.load(paths['offsets.npy']).astype(np.int64)
    if len(offsets) < 2 or offsets[-1] == 0:
        raise SystemExit(f"{folder}: the {split} split has no examples; check the dataset and re-run data/prepare.py")
    ids = np.memmap(paths['ids.bin'], dtype=np.uint32, mode='r')
    mask = np.memmap(paths['mask.bin'], dtype=np.uint8, mode='r')
    if len(ids) != offsets[-1] or len(mask) != len(ids):
        raise SystemExit(f"{folder}: {split} ids/mask/offsets sizes disagree; re-run data/prepare.py")
    a = offsets[:-1]
    b = np.minimum(offsets[1:], a + block_size + 1)
    supervised = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    keep = np.flatnonzero((b - a >= 2) & (supervised[b] - supervised[np.minimum(a + 1, b)] > 0))
    if limit:
        keep = keep[:limit]
    if len(keep) == 0:
        raise SystemExit(f"{folder}: no {split} example has a supervised token; re-run data/prepare.py")
    return dict(ids=ids, mask=mask, a=a[keep], b=b[keep], index=keep, prior=None)


def plan_batches(lengths, batch_tokens, window, rng):
    """Micro-batches (arrays of example indices): shuffle, sort each window by length, cut each window into
    batches of at most batch_tokens padded tokens, shuffle the batches. Same rng state, same plan."""
    order = rng.permutation(len(lengths))
    batches = []
    for w in range(0, len(order), window):
        chunk = order[w:w + window]
        chunk = chunk[np.argsort(lengths[chunk], kind='stable')]
        start = 0
        for i in range(1, len(chunk) + 1):  # ascending lengths: the newest example is the longest of the batch
            if i == len(chunk) or (i + 1 - start) * lengths[chunk[i]] > batch_tokens:
                batches.append(chunk[start:i])
                start = i
    return [batches[j] for j in rng.permutation(len(batches))]


class Batches:
    """The training data's position. Each epoch's micro-batches are a pure function of (seed, epoch), so the position
    is just (epoch, index) and a resumed run continues with the very same batches."""

    def __init__(self, lengths, batch_tokens, window, seed):
        self.lengths, self.batch_tokens, self.window, self.seed = lengths, batch_tokens, window, seed
        self.load({'epoch': 0, 'index': 0})
        self.per_epoch = len(self.plan)

    def next_step(self, n):
        """The next n micro-batches (arrays of example indices), moving on to the next epoch where one ends."""
        batches = []
        while len(batches) < n:
            if self.index == len(self.plan):
                self.load({'epoch': self.epoch + 1, 'index': 0})
            else:
                batches.append(self.plan[self.index])
                self.index += 1
        return batches

    def state(self):
        return {'epoch': self.epoch, 'index': self.index}

    def load(self, state):
        self.epoch, self.index = state['epoch'], state['index']
        rng = np.random.default_rng([self.seed, self.epoch])
        self.plan = plan_batches(self.lengths, self.batch_tokens, self.window, rng)


def make_batch(data, rows, device):
    """x, y, m (+ prior p, u) tensors (B, T) with right padding; padded and prompt targets have m = 0."""
    a, b = data['a'][rows], data['b'][rows]
    B, T = len(rows), int((b - a).max()) - 1
    x, y = np.zeros((B, T), np.int64), np.zeros((B, T), np.int64)
    m = np.zeros((B, T), np.float32)
    prior = data['prior']
    p, u = (np.zeros((B, T), np.float32) for _ in range(2))
    for r in range(B):
        n = b[r] - a[r] - 1
        x[r, :n], y[r, :n], m[r, :n] = data['ids'][a[r]:b[r] - 1], data['ids'][a[r] + 1:b[r]], data['mask'][a[r] + 1:b[r]]
        if prior is not None:
            p[r, :n], u[r, :n] = prior[0][a[r] + 1:b[r]], prior[1][a[r] + 1:b[r]]
    batch = dict(x=x, y=y, m=m, p=p, u=u) if prior is not None else dict(x=x, y=y, m=m)
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


def prior_cache(model, data, folder, tok_fingerprint, batch_tokens, device, autocast):
    """(p_ref, u_ref) per target token of the frozen initial model, aligned with data['ids'] (0 where unsupervised).
    Kept beside the prepared data and keyed by the weights, tokenizer and data files, so a stale cache is never
    used; only the examples this run trains on are computed (and remembered for later runs)."""
    key = hashlib.sha256(tok_fingerprint.encode())
    for name, t in model.state_dict().items():
        key.update(name.encode())
        key.update(t.detach().float().cpu().numpy().tobytes())
    for s in ('ids.bin', 'mask.bin', 'offsets.npy'):
        st = os.stat(os.path.join(folder, f'train.{s}'))
        key.update(f'{s}:{st.st_size}:{st.st_mtime_ns}'.encode())
    cache = os.path.join(folder, f'prior-{key.hexdigest()[:16]}')
    os.makedirs(cache, exist_ok=True)
    n_tok = len(data['ids'])
    files = [os.path.join(cache, f) for f in ('p.npy', 'u.npy', 'done.npy')]
    if not os.path.exists(files[2]):
        for f in files[:2]:
            np.lib.format.open_memmap(f, mode='w+', dtype=np.float32, shape=(n_tok,)).flush()
        np.save(files[2], np.zeros(len(np.load(os.path.join(folder, 'train.offsets.npy'))) - 1, bool))
    done = np.load(files[2])
    todo = np.flatnonzero(~done[data['index']])
    if len(todo):
        print(f"prior signals: a no-grad pass of the initial model over {len(todo)} examples -> {cache}")
        P, U = (np.lib.format.open_memmap(f, mode='r+') for f in files[:2])
        sub = dict(data, a=data['a'][todo], b=data['b'][todo], prior=None)
        for rows in plan_batches(sub['b'] - sub['a'], batch_tokens, len(todo), np.random.default_rng(0)):
            batch = make_batch(sub, rows, device)
            with torch.no_grad(), autocast:
                h = model(batch['x'], return_hidden=True)
                p, u = weights.target_signals(h, model.lm_head.weight, batch['y'])
            p, u = (t.mul(batch['m']).cpu().numpy() for t in (p, u))
            for r, i in enumerate(rows):
                a, n = sub['a'][i], sub['b'][i] - sub['a'][i] - 1
                P[a + 1:a + 1 + n], U[a + 1:a + 1 + n] = p[r, :n], u[r, :n]
        P.flush(), U.flush()
        done[data['index'][todo]] = True
        np.save(files[2] + '.tmp.npy', done)  # marked done only after the values are on disk
        os.replace(files[2] + '.tmp.npy', files[2])
    return tuple(np.load(f, mmap_mode='r') for f in files[:2])
