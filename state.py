"""The per-epoch state of an unfinished pack (train.py --resume): its file name, what it must match to be
resumed, reading it, and which state files a kill left behind. loop.py writes it after every epoch.

    <folder>/state/<name>@<seed>,<seed>+<name>@<seed>.pt     one file per pack, named by its members
"""
import glob
import hashlib
import os
from dataclasses import asdict

import torch
from tqdm import tqdm

import rules


def path(folder, members):
    """state/<name>@<seed>,<seed>+<name>@<seed>.pt for the (name, seed) members of a pack: one file per set of
    members (names cannot contain @ , +); a very long set is shortened to its first name and a hash."""
    by_name = {}
    for name, seed in members:
        by_name.setdefault(name, []).append(str(seed))
    stem = "+".join(f"{n}@{','.join(s)}" for n, s in by_name.items())
    if len(stem) > 200:
        stem = f"{members[0][0]}@{hashlib.sha256(stem.encode()).hexdigest()[:16]}"
    return os.path.join(folder, "state", stem + ".pt")


def members_of(path):
    """[(name, seed)] a state file's name spells out (None for a shortened one)."""
    stem = os.path.basename(path)[:-3]
    try:
        return [(n, int(s)) for part in stem.split("+") for n, seeds in [part.split("@")] for s in seeds.split(",")]
    except ValueError:
        return None


def signature(members, device):
    """What a state file must match to be resumed: each member's name, seed and config that decides its numbers."""
    return [rules.comparable(asdict(m)) | {"name": m.name, "seed": s, "device": device} for m, s in members]


def load(state_path, members, device):
    """A saved state of exactly these members, or ValueError naming the file and what differs."""
    try:  # RNG states must stay CPU byte tensors: load everything to the CPU, load_state_dict moves the rest
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, or not a state file at all
        raise ValueError(f"{state_path} is damaged ({type(e).__name__}); delete it to train those seeds from the start")
    want, have = signature(members, device), state.get("members") or [{}]
    if want != have:
        diff = sorted({f"{k} ({h.get(k)!r} -> {w.get(k)!r})" for w, h in zip(want, have + [{}] * len(want))
                       for k in set(w) | set(h) if w.get(k) != h.get(k)})
        raise ValueError(f"{state_path} was saved by another config: {', '.join(diff) or 'other members'}; run that "
                         f"command with --resume, or delete the file to start afresh")
    return state


def written(path, members, which, runs):
    """Whether the state at path (of these members) holds, for each member in `which`, exactly the epochs its
    results file already holds; False for a damaged state."""
    try:
        histories = torch.load(path, map_location="cpu", weights_only=True)["histories"]
    except Exception:  # damaged: plan() names it when it is this pack's
        return False
    finished = {(n, r["seed"]): r["epochs"] for n in runs for r in runs[n]}
    return len(histories) == len(members) and all(finished.get(m) == h for m, h in zip(members, histories) if m in which)


def sweep_stale(out, runs):
    """Remove the state files whose every member already sits in its JSON with the very epochs the state holds:
    a kill between writing a result and removing its state leaves them."""
    for path in glob.glob(os.path.join(glob.escape(out), "state", "*.pt")):
        members = members_of(path)
        finished = {(n, r["seed"]) for n in runs for r in runs[n] if r["status"] == "ok"}
        if members and all(m in finished for m in members) and written(path, members, members, runs):
            os.remove(path)
            tqdm.write(f"removed {path}: the run it saved is already written")
