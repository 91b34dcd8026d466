"""The one owner of the results files: their schema, atomic writing (a checkpoint and its JSON as one unit),
locking, reading and validating. (The per-epoch state for --resume is written through save_torch; state.py names and
reads it. The choices' files, recipe.json and choice.json, are choices.py's, written through write_json.)

    <folder>/<name>.json                   one variant: config, env, one run per seed, summary (schema 3)
    <folder>/<name>-seed<S>-<sha8>.pt      a run's final weights, a state_dict for model.Net; the JSON names it
                                           relative to its own folder, so a results folder can be copied or moved
    <folder>/state/<name>@<seeds>.pt       the per-epoch state of an unfinished run (train.py --resume)
    <folder>/<name>.lock                   held (flock) while a train.py writes <name>.json
    <folder>/recipe.json, choice.json      the choices made on the validation split (choices.py)
    <folder>/REPORT.md, *.png              rendered by report.py and plot.py, written here by write_files()
Nobody else writes into a results folder.
"""
import contextlib
import fcntl
import glob
import hashlib
import io
import json
import os
import re

import torch

import rules
import stats

REPO = os.path.dirname(os.path.abspath(__file__))
SCHEMA = 3
# names a results folder keeps for itself: a run called so would collide with them
RESERVED = {"recipe", "sweep", "choice", "plan", "summary", "benchmark", "benchmark-gpu", "state", "REPORT"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,99}")  # no '@', ',' or '+': they separate members in state names


class ResultsError(Exception):
    """A results file is missing, damaged, edited, of an unknown schema, locked or would be overwritten; the
    message says which file and the ways out."""


def check_name(name):
    """None if `name` may name a results file, else why not."""
    if not NAME.fullmatch(name):
        return f"{name[:40]!r} must be 1-100 letters, digits and . _ = - (not starting with . _ = -)"
    if name in RESERVED or name.endswith(".lock"):
        return f"{name!r} is reserved by the results folder ({', '.join(sorted(RESERVED))})"
    return None


# -----------------------------------------------------------------------------
# writing: a temporary file in the same folder, then os.replace, so a reader sees the old file or the new one

def sweep_temporaries(folder):
    """Remove the *.tmp<PID> files of processes that no longer run (a kill -9 leaves them behind)."""
    for path in glob.glob(os.path.join(glob.escape(folder), "*.tmp[0-9]*")):
        pid = re.search(r"\.tmp(\d+)$", path)
        if pid and int(pid[1]) != os.getpid() and not os.path.exists(f"/proc/{pid[1]}"):
            with contextlib.suppress(OSError):
                os.remove(path)


def atomic_write(path, write):
    sweep_temporaries(os.path.dirname(path) or ".")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:  # a full disk reports no file name: name the one being written
        e.filename = e.filename or path
        raise
    finally:  # every exit path, Ctrl-C and SIGTERM included (train.py turns SIGTERM into an exception)
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path, blob):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(blob)
    atomic_write(path, write)


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def write_files(folder, blobs):
    """{file name: bytes} into folder, each atomically (figures and REPORT.md: rendered first, written here)."""
    for name, blob in blobs.items():
        write_bytes(os.path.join(folder, name), blob)
    return [os.path.join(folder, name) for name in blobs]


def save_torch(path, obj):
    """torch.save into memory, then a plain file write: on a full disk torch.save's own writer raises a
    RuntimeError about stream positions, a plain write raises OSError(ENOSPC), which train.py explains."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def checkpoint_name(name, seed, state_dict):
    """<name>-seed<S>-<first 8 hex of the weights' SHA-256>.pt: new weights never take an old file's name."""
    return f"{name}-seed{seed}-{weights_sha256(state_dict)[:8]}.pt"


def weights_sha256(state_dict):
    h = hashlib.sha256()
    for key, t in state_dict.items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save(folder, name, result, weights):
    """Write the new checkpoints (weights: {seed: state_dict}), then the JSON that names them, then delete the
    checkpoints of <name> that the JSON no longer names. Checkpoints never reuse a name, so a kill at any point
    leaves the old JSON with its old checkpoints or the new JSON with its new ones, plus at worst an orphan. A
    checkpoint that another JSON in the folder names is kept."""
    for run in result["runs"]:
        if run["seed"] in weights:
            run["checkpoint"] = checkpoint_name(name, run["seed"], weights[run["seed"]])
            save_torch(os.path.join(folder, run["checkpoint"]), weights[run["seed"]])
    write_json(os.path.join(folder, f"{name}.json"), result)
    named = {r["checkpoint"] for r in result["runs"] if r.get("checkpoint")} | named_by_others(folder, name)
    for path in glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(name)}-seed*.pt")):
        if os.path.basename(path) not in named and checkpoint_owner(path) == name:
            os.remove(path)


def named_by_others(folder, name):
    """The checkpoints that the other JSON files in folder name (a user's copy of <name>.json): kept when <name>
    is replaced, so that the copy stays whole."""
    named = set()
    for path in glob.glob(os.path.join(glob.escape(folder), "*.json")):
        if os.path.basename(path) != f"{name}.json":
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError), open(path) as f:
                named |= {r["checkpoint"] for r in json.load(f)["runs"] if r.get("checkpoint")}
    return named


def checkpoint_owner(path):
    """The <name> of a <name>-seed<S>[-<sha8>].pt file (names may themselves contain '-seed')."""
    stem = os.path.basename(path)[:-3]
    head, _, tail = stem.rpartition("-seed")
    return head if tail.split("-")[0].isdigit() else None


def busy(folder, name):
    """Whether another process holds the lock of <folder>/<name>.json now (a train.py is writing it)."""
    if not os.path.exists(os.path.join(folder, f"{name}.lock")):
        return False
    try:
        with locked(folder, [name]):
            return False
    except ResultsError:
        return True


@contextlib.contextmanager
def locked(folder, names):
    """An exclusive flock on <folder>/<name>.lock for each name while one train.py writes <name>.json; all are
    released however the block ends, and the kernel releases them if the process dies: no stale lock."""
    with contextlib.ExitStack() as stack:
        for name in names:
            path = os.path.join(folder, f"{name}.lock")
            lock = stack.enter_context(open(path, "a"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ResultsError(f"another train.py is writing {path[:-5]}.json right now (it holds {path}); "
                                   f"wait for it, or use another --name or --out")
        yield


# -----------------------------------------------------------------------------
# reading and validating: every number that can be derived is checked against its derivation

def read_json(path, repair):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror})")
    except ValueError as e:
        raise ResultsError(f"{path}: not valid JSON ({e}); {repair}")


def load(path):
    """One results JSON, checked: parses, has the current schema, what train.py and the readers need, and every
    stored number that follows from the per-epoch records equals its derivation (nothing was edited by hand)."""
    r = read_json(path, "move it away, or pass --overwrite to train.py")
    if not isinstance(r, dict) or r.get("schema") != SCHEMA:
        got = r.get("schema") if isinstance(r, dict) else None
        raise ResultsError(f"{path}: schema {got!r}, this code reads schema {SCHEMA}; move it away")
    if not r.get("runs") or not all(k in r for k in ("variant", "config", "runs", "summary")) or \
            not all(isinstance(run, dict) and "seed" in run and "status" in run for run in r["runs"]):
        raise ResultsError(f"{path}: no runs, or missing variant/config/summary")
    try:
        stats.check_derived(r)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ResultsError(f"{path}: a run lacks what train.py writes ({type(e).__name__}: {e})")
    except ValueError as e:
        raise ResultsError(f"{path}: {e}; results are never edited by hand: restore the file (git checkout) or "
                           f"train again")
    return r


def load_checkpoint(folder, run):
    """A run's final state_dict, from the checkpoint its JSON names (relative to the JSON's folder)."""
    path = os.path.join(folder, run["checkpoint"])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ResultsError(f"{path}: checkpoint named by the JSON is missing")
    except Exception as e:  # truncated, emptied, not a checkpoint at all
        raise ResultsError(f"{path}: damaged checkpoint ({type(e).__name__}); restore it (git checkout) or train again")


def conv_weights(folder, result):
    """Per finished run, its final convolution weights (conv1..conv9), read from the checkpoints (weights.png)."""
    return [[w for w in load_checkpoint(folder, run).values() if w.dim() == 4]
            for run in result["runs"] if run["status"] == "ok"]


def result_paths(folder):
    return sorted(p for p in glob.glob(os.path.join(glob.escape(folder), "*.json"))
                  if os.path.basename(p)[:-5] not in RESERVED)


def load_folder(folder):
    """{name: result} for every <name>.json in folder that train.py wrote, in the variant table's order. One
    folder holds one split: validation runs and test runs are never mixed."""
    from regularizers import VARIANTS
    paths = result_paths(folder)
    if not paths:
        raise ResultsError(f"{folder}: no results JSON found; train a variant first (make l1)")
    found = {os.path.basename(p)[:-5]: load(p) for p in paths}
    check_split(folder, found=found)
    order = {n: i for i, n in enumerate(VARIANTS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[1]["variant"], 99), kv[0])))


def check_split(folder, val=None, found=None):
    """One folder holds one split: validation runs (--val) and test runs never mix, neither in the folder nor with
    a run about to be written there (val: its split). found: the folder's results, where already loaded; else its
    files are read here, and damaged ones are left to load to report."""
    splits = {name: bool(r["config"]["val"]) for name, r in (found or {}).items()}
    for path in [] if found is not None else result_paths(folder):
        try:
            splits[os.path.basename(path)[:-5]] = bool(read_json(path, "")["config"]["val"])
        except (ResultsError, KeyError, TypeError):
            continue
    other = sorted(n for n, v in splits.items() if v != val)
    if val is not None and other:
        raise ResultsError(f"{folder} holds {'validation' if not val else 'test'} runs ({other[0]}.json); a "
                           f"{'--val' if val else 'test'} run goes to a folder of its own (--out)")
    if len(set(splits.values())) > 1:
        names = sorted(n for n, v in splits.items() if v)
        are = "is a validation run" if len(names) == 1 else "are validation runs"
        raise ResultsError(f"{folder}: {', '.join(names)} {are} (--val) among test runs; keep each split in a folder "
                           f"of its own (--out)")


def load_datasize(folder):
    """{N: {variant: result}} of the data-size study's test runs under folder/datasize/n<N>/ ({} where none)."""
    sizes = glob.glob(os.path.join(glob.escape(folder), "datasize", "n[0-9]*"))
    return {int(os.path.basename(d)[1:]): load_folder(d) for d in sorted(sizes) if result_paths(d)}


def folders(root):
    """(folder, its file names) for every folder under root (root included) but the state/ folders, which hold
    unfinished runs."""
    return [(d, files) for d, _, files in sorted(os.walk(root)) if os.path.basename(d) != "state"]


def refuse_links(root):
    """ResultsError naming the first symbolic link under root (root itself may be one). Nothing the study writes is
    a link, and a link would let the readers see files the verifier does not (or the other way round)."""
    for folder, dirs, files in sorted(os.walk(root)):
        link = next((os.path.join(folder, n) for n in sorted(dirs + files) if os.path.islink(os.path.join(folder, n))), None)
        if link:
            raise ResultsError(f"{link} is a symbolic link; results folders hold no links (what is read must be what "
                               f"verify.py checks): replace it with a copy of what it points to")


def result_folders(root):
    """Every folder under root (root included) that holds results JSON files."""
    return [d for d, _ in folders(root) if result_paths(d)]


def check_merge(path, old, config):
    """A run may add seeds to an existing results file only if it computes the same way; else one line that
    names the file, what differs and the ways out."""
    diff = rules.differences(old["config"], config)
    if diff:
        raise ResultsError(f"{path} holds a finished run with another config ({', '.join(diff)}); use another "
                           f"--name or --out, or --overwrite to replace it (its seeds {old['config']['seeds']} "
                           f"would be dropped)")
