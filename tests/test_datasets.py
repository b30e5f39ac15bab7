"""Dataset plugins on small files written here (IDX, CIFAR pickles, PNG folders, npz), plus MNIST."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clbench.datasets.arrays import ArraysDataset, ArraysOptions
from clbench.datasets.base import ClassificationOptions, stratified_split
from clbench.datasets.cifar import CifarDataset, CifarOptions
from clbench.datasets.digits import DigitsDataset, DigitsOptions
from clbench.datasets.imagefolder import ImageFolderDataset, ImageFolderOptions
from clbench.datasets.mnist import MnistDataset, MnistOptions
from clbench.datasets.synthetic import SyntheticDataset, SyntheticOptions
from clbench.errors import ConfigError, DataError
from clbench.options import parse_options
from clbench.registry import DATASETS

SHARED_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"

PLUGINS = {
    "sklearn-digits": DigitsDataset,
    "arrays": ArraysDataset,
    "mnist": MnistDataset,
    "cifar": CifarDataset,
    "imagefolder": ImageFolderDataset,
    "synthetic": SyntheticDataset,
}


def splits(ds):
    return ds.split("train"), ds.split("test")


# -- the plugins as a family ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_registered_and_shaped_alike(name):
    cls = DATASETS.get(name)
    assert cls is PLUGINS[name]
    assert issubclass(cls.Options, ClassificationOptions)
    assert cls.kind == "classification"
    assert cls.modality == ("array" if name in ("arrays", "synthetic") else "image")
    names = {f.name for f in dataclasses.fields(cls.Options)}
    assert {"limit", "test_fraction"} <= names


def test_path_is_required():
    for cls in (ArraysDataset, MnistDataset, CifarDataset, ImageFolderDataset):
        with pytest.raises(ConfigError, match="path"):
            parse_options(cls.Options, {})
        assert parse_options(cls.Options, {"path": "x", "limit": 5}).limit == 5


def test_modules_do_not_import_torch():
    modules = [PLUGINS[n].__module__ for n in PLUGINS]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_relative_paths_resolve_against_root(tmp_path):
    np.savez(
        tmp_path / "f.npz", x_train=np.ones((2, 3)), y_train=[0, 1], x_test=np.ones((2, 3)), y_test=[1, 0]
    )
    ds = ArraysDataset(ArraysOptions(path="f.npz"), root=tmp_path)
    ds.check()
    assert ds.sources() == [tmp_path / "f.npz"]
    assert ds.fingerprint()["sources"][0]["size"] > 0


# -- sklearn digits ------------------------------------------------------------------------------


def test_digits_match_sklearn_after_scaling():
    from sklearn.datasets import load_digits

    ref = load_digits()
    expected = np.rint(ref.images * 255 / 16).astype(np.uint8)
    ds = DigitsDataset(DigitsOptions(), seed=3)
    train, test = splits(ds)
    tr, te = stratified_split(ref.target, 0.2, 3)
    assert train.items.dtype == np.uint8 and train.items.shape[1:] == (8, 8)
    np.testing.assert_array_equal(train.items, expected[tr])
    np.testing.assert_array_equal(test.items, expected[te])
    np.testing.assert_array_equal(test.labels, ref.target[te])
    assert len(train) + len(test) == 1797 and ds.classes == [str(i) for i in range(10)]
    assert train.items.max() == 255 and 128 in expected  # 16 -> 255, 8 -> 127.5 -> 128
    assert "sklearn" in ds.fingerprint()


def test_digits_split_is_stratified():
    test = DigitsDataset(DigitsOptions(test_fraction=0.3)).split("test")
    counts = np.bincount(test.labels)
    assert len(test) == 540 and counts.min() >= 52 and counts.max() <= 56


# -- synthetic -----------------------------------------------------------------------------------


def _one_nn_accuracy(train, test):
    xtr = train.items.reshape(len(train), -1).astype(np.float64)
    xte = test.items.reshape(len(test), -1).astype(np.float64)
    d = ((xte[:, None, :] - xtr[None, :, :]) ** 2).sum(-1)
    return float((train.labels[d.argmin(1)] == test.labels).mean())


def test_synthetic_vectors():
    opts = SyntheticOptions(n_train=60, n_test=30, num_classes=3, dim=8, noise=0.3)
    ds = SyntheticDataset(opts)
    train, test = splits(ds)
    assert ds.modality == "array" and train.modality == "array" and ds.num_classes == 3
    assert train.items.shape == (60, 8) and train.items.dtype == np.float32
    assert np.bincount(train.labels).tolist() == [20, 20, 20]
    assert _one_nn_accuracy(train, test) > 0.9
    again = SyntheticDataset(opts, seed=5).split("train")  # the run seed does not change the data
    np.testing.assert_array_equal(again.items, train.items)
    other = SyntheticDataset(dataclasses.replace(opts, seed=1)).split("train")
    assert not np.array_equal(other.items, train.items)


@pytest.mark.parametrize("channels,shape", [(3, (16, 16, 3)), (1, (16, 16))])
def test_synthetic_images(channels, shape):
    ds = SyntheticDataset(
        SyntheticOptions(kind="images", n_train=40, n_test=20, channels=channels, noise=0.3)
    )
    train, test = splits(ds)
    assert ds.modality == "image" and train.modality == "image"
    assert train.items.shape == (40, *shape) and train.items.dtype == np.uint8
    assert _one_nn_accuracy(train, test) > 0.9


def test_synthetic_options_are_checked():
    with pytest.raises(ConfigError, match="n_test"):
        parse_options(SyntheticOptions, {"num_classes": 10, "n_test": 5})
    with pytest.raises(ConfigError, match="kind"):
        parse_options(SyntheticOptions, {"kind": "image"})


# -- arrays --------------------------------------------------------------------------------------


def _npz(path, **arrays):
    base = {
        "x_train": np.zeros((4, 3)),
        "y_train": [0, 1, 0, 1],
        "x_test": np.zeros((2, 3)),
        "y_test": [0, 1],
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_arrays_load(tmp_path):
    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(10, 4, 2)), rng.normal(size=(6, 8))
    path = _npz(
        tmp_path / "f.npz",
        x_train=xtr,
        y_train=np.arange(10) % 3,
        x_test=xte,
        y_test=np.arange(6.0) % 3,
        classes=np.array(["a", "b", "c"]),
    )
    ds = ArraysDataset(ArraysOptions(path=str(path)))
    train, test = splits(ds)
    assert train.items.dtype == np.float32 and train.items.shape == (10, 8)
    np.testing.assert_allclose(train.items, xtr.reshape(10, 8).astype(np.float32))
    assert test.labels.dtype == np.int64 and test.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.classes == ["a", "b", "c"] and train.modality == "array"


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"y_test": None}, "missing array 'y_test'"),
        ({"y_train": [0, 1, 0]}, "x_train has 4 rows but y_train has 3 labels"),
        ({"y_train": [0.5, 1, 0, 1]}, "'y_train' must hold integer class labels"),
        ({"y_train": np.array(["a", "b", "a", "b"])}, "'y_train' must hold integer class labels"),
        ({"y_test": [-1, 0]}, "non-negative"),
        ({"x_test": np.zeros((2, 5))}, "x_train has 3 columns but x_test has 5"),
        ({"x_train": np.zeros(4)}, "must be a matrix"),
        ({"x_train": np.full((4, 3), np.nan)}, "NaN"),
    ],
)
def test_arrays_errors_name_file_and_problem(tmp_path, arrays, message):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match="bad.npz") as err:
        ArraysDataset(ArraysOptions(path=str(path))).split("train")
    assert message in str(err.value)


def test_arrays_check_and_corrupt_file(tmp_path):
    _npz(tmp_path / "partial.npz", x_test=None)
    with pytest.raises(DataError, match=r"partial\.npz: missing array 'x_test'"):
        ArraysDataset(ArraysOptions(path="partial.npz"), root=tmp_path).check()
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"junk\.npz"):
        ArraysDataset(ArraysOptions(path="junk.npz"), root=tmp_path).split("test")
    with pytest.raises(DataError, match=r"missing\.npz"):
        ArraysDataset(ArraysOptions(path="missing.npz"), root=tmp_path).check()


def test_limit_keeps_class_proportions(tmp_path):
    y = np.repeat([0, 1, 2], [60, 20, 20])
    path = _npz(tmp_path / "f.npz", x_train=np.arange(300.0).reshape(100, 3), y_train=y)
    train = ArraysDataset(ArraysOptions(path=str(path), limit=50)).split("train")
    assert np.bincount(train.labels).tolist() == [30, 10, 10]
    np.testing.assert_array_equal(train.items[:, 0] // 3, np.sort(train.items[:, 0] // 3))  # order kept
    assert set(train.items[:, 0].astype(int) // 3) <= set(range(100))


# -- MNIST (IDX) ---------------------------------------------------------------------------------


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False, type_code: int = 0x08) -> Path:
    header = struct.pack(">BBBB", 0, 0, type_code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob = header + np.ascontiguousarray(arr).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(blob))
    else:
        path.write_bytes(blob)
    return path


def mnist_arrays(n: int, seed: int = 0, num_classes: int = 10):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % num_classes).astype(np.uint8)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels  # so an image's label can be read back from the pixels
    return images, labels


def write_mnist(folder: Path, prefixes=("train", "t10k"), n=100, gz=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, prefix in enumerate(prefixes):
        images, labels = mnist_arrays(n, seed=i)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_train_and_test_files(tmp_path, gz):
    folder = write_mnist(tmp_path / "mnist", n=50, gz=gz)
    ds = MnistDataset(MnistOptions(path=str(folder)))
    ds.check()
    train, test = splits(ds)
    assert train.items.shape == (50, 28, 28) and train.items.dtype == np.uint8
    assert len(test) == 50 and ds.classes == [str(i) for i in range(10)]
    images, labels = mnist_arrays(50, seed=1)
    np.testing.assert_array_equal(test.items, images)
    np.testing.assert_array_equal(test.labels, labels)
    assert len(ds.fingerprint()["sources"]) == 4


def test_mnist_test_only_is_split_stratified_and_seeded(tmp_path):
    folder = write_mnist(tmp_path / "m", prefixes=("t10k",), n=200, gz=True)

    def load(seed, fraction=0.25):
        return splits(MnistDataset(MnistOptions(path=str(folder), test_fraction=fraction), seed=seed))

    train, test = load(0)
    assert (len(train), len(test)) == (150, 50)
    assert np.bincount(test.labels).tolist() == [5] * 10
    np.testing.assert_array_equal(test.items[:, 0, 0], test.labels)  # images stay with their labels
    same = load(0)[1]
    np.testing.assert_array_equal(same.items, test.items)
    other = load(1)[1]
    assert not np.array_equal(other.items, test.items)
    assert len(load(0, 0.5)[1]) == 100


def test_mnist_limit_is_stratified(tmp_path):
    folder = write_mnist(tmp_path / "m", n=200)
    train = MnistDataset(MnistOptions(path=str(folder), limit=40)).split("train")
    assert np.bincount(train.labels).tolist() == [4] * 10


def test_mnist_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no MNIST IDX files found .*t10k-images-idx3-ubyte"):
        MnistDataset(MnistOptions(path=str(empty))).check()
    with pytest.raises(DataError, match="not found"):
        MnistDataset(MnistOptions(path=str(tmp_path / "nowhere"))).split("train")

    half = tmp_path / "half"
    half.mkdir()
    write_idx(half / "t10k-images-idx3-ubyte", mnist_arrays(10)[0])
    with pytest.raises(DataError, match="but not t10k-labels-idx1-ubyte"):
        MnistDataset(MnistOptions(path=str(half))).split("train")

    images, labels = mnist_arrays(10)
    bad = write_mnist(tmp_path / "bad", prefixes=("t10k",), n=10)
    (bad / "t10k-images-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03" + bytes(100))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: not an IDX file"):
        MnistDataset(MnistOptions(path=str(bad))).check()

    blob = write_idx(bad / "t10k-images-idx3-ubyte", images).read_bytes()
    (bad / "t10k-images-idx3-ubyte").write_bytes(blob[:-5])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: IDX header declares shape \(10, 28, 28\)"):
        MnistDataset(MnistOptions(path=str(bad))).split("test")

    write_idx(bad / "t10k-images-idx3-ubyte", images)
    write_idx(bad / "t10k-labels-idx1-ubyte", labels[:7])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: 7 labels for 10 images"):
        MnistDataset(MnistOptions(path=str(bad))).check()

    write_idx(bad / "t10k-labels-idx1-ubyte", labels.reshape(2, 5))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: expected unsigned-byte labels"):
        MnistDataset(MnistOptions(path=str(bad))).split("test")

    (bad / "t10k-labels-idx1-ubyte").unlink()
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x0a")[:-6])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz"):
        MnistDataset(MnistOptions(path=str(bad))).split("test")


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not present")
def test_real_mnist_test_set_loads():
    ds = MnistDataset(MnistOptions(path="../shared/data/mnist"), root=Path(__file__).resolve().parents[1])
    ds.check()
    train, test = splits(ds)
    assert len(train) + len(test) == 10_000 and len(test) == 2_000
    assert train.items.shape[1:] == (28, 28) and train.items.dtype == np.uint8
    assert ds.num_classes == 10
    assert set(np.unique(np.concatenate([train.labels, test.labels]))) == set(range(10))


# -- CIFAR ---------------------------------------------------------------------------------------


def cifar_batch(n, seed, label_key="labels", num_classes=10, extra=None):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # the CIFAR row layout: R plane, G, B
    batch = {
        b"batch_label": b"batch",
        b"data": data,
        label_key.encode(): [int(i % num_classes) for i in range(n)],
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }
    batch.update(extra or {})
    return batch, images


def dump(path: Path, obj, protocol=2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10(root: Path, n=20, protocol=2) -> tuple[Path, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol)
    for i in range(1, 6):
        dump(folder / f"data_batch_{i}", cifar_batch(n, i)[0], protocol)
    batch, test_images = cifar_batch(n, 0)
    dump(folder / "test_batch", batch, protocol)
    return folder, test_images


def write_cifar100(root: Path, n=40) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    dump(
        folder / "meta",
        {
            b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"k{i}".encode() for i in range(20)],
        },
    )
    for name, seed in (("train", 1), ("test", 2)):
        batch, _ = cifar_batch(n, seed, "fine_labels", 100, {b"coarse_labels": [i % 20 for i in range(n)]})
        dump(folder / name, batch)
    return folder


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10(tmp_path, protocol):
    folder, test_images = write_cifar10(tmp_path, protocol=protocol)
    for path in (folder, tmp_path):  # the batches folder or the folder holding it
        ds = CifarDataset(CifarOptions(path=str(path)))
        ds.check()
        train, test = splits(ds)
        assert train.items.shape == (100, 32, 32, 3) and train.items.dtype == np.uint8
        np.testing.assert_array_equal(test.items, test_images)
        assert test.labels.tolist() == [i % 10 for i in range(20)]
        assert ds.classes == [f"c{i}" for i in range(10)]
        assert len(ds.fingerprint()["sources"]) == 7


def test_cifar_reads_numpy1_style_pickles(tmp_path):
    folder, test_images = write_cifar10(tmp_path)
    for f in folder.iterdir():  # the published files name numpy.core, not numpy._core
        f.write_bytes(f.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in (folder / "test_batch").read_bytes()
    np.testing.assert_array_equal(
        CifarDataset(CifarOptions(path=str(folder))).split("test").items, test_images
    )


def test_cifar100_fine_and_coarse(tmp_path):
    write_cifar100(tmp_path)
    ds = CifarDataset(CifarOptions(path=str(tmp_path), variant="auto"))
    train, test = splits(ds)
    assert ds.num_classes == 100 and ds.classes[:2] == ["f0", "f1"] and len(train) == 40
    assert test.labels.max() == 39
    coarse = CifarDataset(CifarOptions(path=str(tmp_path), variant="100", labels="coarse"))
    assert coarse.split("test").labels.max() == 19 and coarse.num_classes == 20


def test_cifar_errors_name_the_file(tmp_path):
    folder, _ = write_cifar10(tmp_path / "c10")
    with pytest.raises(DataError, match=r"no CIFAR data found \(expected cifar-100-python"):
        CifarDataset(CifarOptions(path=str(folder), variant="100")).check()
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3: file not found"):
        CifarDataset(CifarOptions(path=str(folder))).check()
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": 1})[:-4])
    with pytest.raises(DataError, match=r"data_batch_3: not a valid CIFAR pickle"):
        CifarDataset(CifarOptions(path=str(folder))).split("train")
    dump(folder / "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DataError, match=r"data_batch_3: missing key 'labels' \(found: data\)"):
        CifarDataset(CifarOptions(path=str(folder))).split("train")
    dump(folder / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"data_batch_3: 'data' should be uint8 \[N, 3072\]"):
        CifarDataset(CifarOptions(path=str(folder))).split("train")
    dump(folder / "data_batch_3", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(DataError, match=r"data_batch_3: 'labels' out of range"):
        CifarDataset(CifarOptions(path=str(folder))).split("train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: no CIFAR data found"):
        CifarDataset(CifarOptions(path=str(empty))).check()
    write_cifar100(tmp_path / "both")
    write_cifar10(tmp_path / "both")
    with pytest.raises(DataError, match="set variant"):
        CifarDataset(CifarOptions(path=str(tmp_path / "both"))).check()


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_refuses_hostile_pickles(tmp_path, protocol):
    folder, _ = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    dump(folder / "batches.meta", {b"label_names": [_Hostile(marker)]}, protocol)
    assert b"exec" in (folder / "batches.meta").read_bytes()
    with pytest.raises(DataError, match=r"batches.meta: not a valid CIFAR pickle .*refusing .*\.exec"):
        CifarDataset(CifarOptions(path=str(folder))).split("train")
    assert not marker.exists()


# -- image folders -------------------------------------------------------------------------------


def save_image(path: Path, value: int, mode="RGB", size=(6, 5), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, dtype=np.uint8)
    Image.fromarray(arr, mode=None).convert(mode).save(path, format=fmt)


def make_class_folders(root: Path, counts: dict[str, int], ext=".png") -> Path:
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            save_image(root / name / f"{i:03d}{ext}", value=10 * c, mode="L" if i % 2 else "RGB")
    return root


def test_imagefolder_train_test_layout(tmp_path):
    make_class_folders(tmp_path / "train", {"zebra": 3, "ant": 2, "cat": 2})
    make_class_folders(tmp_path / "test", {"cat": 2}, ext=".jpg")
    save_image(tmp_path / "test" / "cat" / "deeper" / "x.PNG", 7, size=(9, 4))
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".hidden").mkdir()
    ds = ImageFolderDataset(ImageFolderOptions(path=str(tmp_path)))
    ds.check()
    train, test = splits(ds)
    assert ds.classes == ["ant", "cat", "zebra"]
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert test.labels.tolist() == [1, 1, 1]  # "cat" keeps its train index
    img = train.items[0]
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (5, 6, 3)
    assert train.items[1].shape == (5, 6, 3)  # grayscale files come back as RGB
    assert test.items[2].shape == (4, 9, 3)
    clone = pickle.loads(pickle.dumps(test.items))  # DataLoader workers get a copy
    np.testing.assert_array_equal(clone[2], test.items[2])


def test_imagefolder_val_stands_in_for_test(tmp_path):
    make_class_folders(tmp_path / "train", {"a": 2, "b": 2})
    make_class_folders(tmp_path / "val", {"a": 1, "b": 1})
    ds = ImageFolderDataset(ImageFolderOptions(path=str(tmp_path)))
    assert len(ds.split("test")) == 2


def test_imagefolder_single_folder_split_is_stratified_and_seeded(tmp_path):
    make_class_folders(tmp_path, {"a": 20, "b": 10, "c": 10})

    def test_paths(seed, **kw):
        ds = ImageFolderDataset(ImageFolderOptions(path=str(tmp_path), test_fraction=0.25, **kw), seed=seed)
        train, test = splits(ds)
        items = test.items
        return [items.items.paths[int(i)] for i in items.indices], test.labels, train

    paths, labels, train = test_paths(0)
    assert np.bincount(labels).tolist() == [5, 3, 2] or np.bincount(labels).tolist() == [5, 2, 3]
    assert len(train) == 30
    assert all(Path(p).parent.name == "abc"[y] for p, y in zip(paths, labels))
    assert test_paths(0)[0] == paths
    assert test_paths(1)[0] != paths
    limited = test_paths(0, limit=10)[2]
    assert np.bincount(limited.labels).tolist() == [5, 3, 2] or np.bincount(limited.labels).tolist() == [
        5,
        2,
        3,
    ]


def test_imagefolder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no class subfolders found"):
        ImageFolderDataset(ImageFolderOptions(path=str(empty))).check()

    loose = tmp_path / "loose"
    save_image(loose / "a.png", 1)
    with pytest.raises(DataError, match=r"loose: no class subfolders .* holds 1 images directly"):
        ImageFolderDataset(ImageFolderOptions(path=str(loose))).split("train")

    no_images = tmp_path / "noimg"
    make_class_folders(no_images, {"a": 2})
    (no_images / "b").mkdir()
    (no_images / "b" / "x.txt").write_text("x")
    with pytest.raises(DataError, match=r"noimg/b: class folder without images"):
        ImageFolderDataset(ImageFolderOptions(path=str(no_images))).split("train")

    unknown = tmp_path / "unknown"
    make_class_folders(unknown / "train", {"a": 2})
    make_class_folders(unknown / "test", {"a": 1, "dog": 1})
    with pytest.raises(DataError, match=r"unknown/test: test classes not found in .*train: dog"):
        ImageFolderDataset(ImageFolderOptions(path=str(unknown))).split("test")

    only_train = tmp_path / "onlytrain"
    make_class_folders(only_train / "train", {"a": 2})
    with pytest.raises(DataError, match=r"onlytrain: has train/ but no test/"):
        ImageFolderDataset(ImageFolderOptions(path=str(only_train))).check()

    with pytest.raises(DataError, match="missing: image folder not found"):
        ImageFolderDataset(ImageFolderOptions(path=str(tmp_path / "missing"))).check()


def test_imagefolder_unreadable_image_named_at_load_time(tmp_path):
    make_class_folders(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG but not really")
    ds = ImageFolderDataset(ImageFolderOptions(path=str(tmp_path), test_fraction=0.5))
    train, test = splits(ds)  # listing works; the file is only opened when indexed
    items = [s.items for s in (train, test)]
    with pytest.raises(DataError, match=r"b/broken\.png: cannot read the image"):
        for split_items in items:
            for i in range(len(split_items)):
                split_items[i]
