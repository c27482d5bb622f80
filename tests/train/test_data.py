"""Dataset loaders, splitting, normalisation, batching and image reading."""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps

from cnngraph.errors import DataError
from cnngraph.train.data import (DataConfig, apply_normalization, iterate_batches, load_dataset,
                                 stratified_split)
from cnngraph.train.datasets.cifar import safe_load_pickle
from cnngraph.train.datasets.digits import DIGITS_PATH
from cnngraph.train.datasets.idx import read_idx
from cnngraph.train.images import read_image, read_inputs

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- digits

def test_digits_sizes_split_and_normalisation():
    ds = load_dataset(DataConfig(), (1, 8, 8))
    sizes = [len(s[1]) for s in (ds.train, ds.val, ds.test)]
    assert sizes == [1077, 270, 450] and sum(sizes) == 1797
    assert ds.classes == [str(d) for d in range(10)] and ds.num_classes == 10
    assert ds.train[0].dtype == np.float32 and ds.train[1].dtype == np.int64
    assert ds.train[0].shape == (1077, 1, 8, 8) and ds.input_shape == (1, 8, 8)
    assert ds.pixel_scale == 16.0
    # auto normalisation is computed on train only: train is standardised exactly.
    assert abs(ds.train[0].mean()) < 1e-5 and abs(ds.train[0].std() - 1) < 1e-5
    raw = ds.train[0] * ds.std[0] + ds.mean[0]
    assert raw.min() > -1e-4 and raw.max() < 16 + 1e-4


def test_digits_split_disjoint_stratified_reproducible():
    with np.load(DIGITS_PATH) as z:
        y = z["y"].astype(int)
        idx = {k: z[k] for k in ("train_idx", "val_idx", "test_idx")}
        assert z["x"].shape == (1797, 8, 8) and z["x"].dtype == np.uint8 and z["x"].max() == 16
    allidx = np.concatenate(list(idx.values()))
    assert len(np.unique(allidx)) == 1797 == len(allidx)
    total = np.bincount(y, minlength=10)
    for k, frac in (("train_idx", 0.6), ("val_idx", 0.15), ("test_idx", 0.25)):
        counts = np.bincount(y[idx[k]], minlength=10)
        assert np.all(np.abs(counts - frac * total) <= 1.5), (k, counts)
    a, b = load_dataset(DataConfig(), (1, 8, 8)), load_dataset(DataConfig(), (1, 8, 8), seed=5)
    assert np.array_equal(a.test[0], b.test[0]) and np.array_equal(a.train[1], b.train[1])


def test_digits_wrong_shape_and_limit():
    with pytest.raises(DataError, match=r"\(1, 8, 8\).*input_shape is \(1, 28, 28\)"):
        load_dataset(DataConfig(), (1, 28, 28))
    ds = load_dataset(DataConfig(limit=100, normalize="none"), (1, 8, 8))
    assert len(ds.train[1]) == 100 and len(ds.val[1]) == 270
    assert ds.mean == [0.0] and ds.std == [1.0] and ds.train[0].max() == 16.0
    ds = load_dataset({"normalize": {"mean": [8.0], "std": [4.0]}}, (1, 8, 8))
    assert ds.mean == [8.0] and ds.train[0].min() == -2.0


def test_config_validation():
    with pytest.raises(ValueError, match="did you mean 'mnist'"):
        DataConfig(dataset="mnsit", path="x")
    with pytest.raises(ValueError, match="needs 'path'"):
        DataConfig(dataset="npz")
    with pytest.raises(ValueError):
        DataConfig(normalize={"mean": [0.5], "std": [0.0]})
    with pytest.raises(ValueError):
        DataConfig(bogus=1)


def test_stratified_split_exact_sizes():
    y = np.repeat(np.arange(3), [50, 30, 20])
    rest, test, val = stratified_split(y, [0.2, 0.1], seed=3)
    assert (len(rest), len(test), len(val)) == (70, 20, 10)
    assert np.bincount(y[test]).tolist() == [10, 6, 4]
    assert np.array_equal(stratified_split(y, [0.2, 0.1], 3)[1], test)


# --------------------------------------------------------------------------- npz

def _npz(tmp_path, name="d.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_npz_layouts_and_dtypes(tmp_path):
    x = RNG.integers(0, 256, (40, 3, 5, 6), dtype=np.uint8)
    y = np.arange(40) % 4
    p1 = _npz(tmp_path, "nchw.npz", x=x, y=y)
    p2 = _npz(tmp_path, "nhwc.npz", x=x.transpose(0, 2, 3, 1), y=y, classes=np.array(list("abcd")))
    p3 = _npz(tmp_path, "f.npz", x=x.astype(np.float32) / 255, y=y.astype(np.int32),
              x_test=x[:8].astype(np.float32) / 255, y_test=y[:8])
    d1 = load_dataset(DataConfig(dataset="npz", path=str(p1), normalize="none"), (3, 5, 6))
    d2 = load_dataset(DataConfig(dataset="npz", path="nhwc.npz", normalize="none"), (3, 5, 6),
                      base_dir=str(tmp_path))
    assert d2.classes == list("abcd") and d1.classes == ["0", "1", "2", "3"]
    assert np.array_equal(d1.train[0], d2.train[0]) and d1.train[0].max() <= 1.0
    assert len(d1.val[1]) == 6 and len(d1.test[1]) == 0          # 15 % carved, no test
    d3 = load_dataset(DataConfig(dataset="npz", path=str(p3), normalize="none"), (3, 5, 6))
    assert len(d3.test[1]) == 8 and np.allclose(d3.train[0], d1.train[0])
    d4 = load_dataset(DataConfig(dataset="npz", path=str(p1), test_fraction=0.25), (3, 5, 6))
    assert [len(s[1]) for s in (d4.train, d4.val, d4.test)] == [24, 6, 10]
    assert len(d4.mean) == 3


def test_npz_three_dim_gets_channel_axis(tmp_path):
    p = _npz(tmp_path, x=np.zeros((10, 4, 4), np.float32), y=np.zeros(10, int))
    ds = load_dataset(DataConfig(dataset="npz", path=str(p), val_fraction=0), (1, 4, 4))
    assert ds.train[0].shape == (10, 1, 4, 4) and ds.std == [1.0]


@pytest.mark.parametrize("arrays,message", [
    ({"x": np.zeros((4, 1, 4, 4)), "z": np.zeros(4)}, r"expected key 'y' \(labels or masks\), found keys \['x', 'z'\]"),
    ({"x": np.zeros((4, 1, 4, 4)), "y": np.zeros(3)}, "expected 4 labels .* found 3"),
    ({"x": np.zeros((4, 1, 4, 4)), "y": np.array([0, 1, -1, 0])}, r"expected labels >= 0, found -1 at index 2"),
    ({"x": np.zeros((4, 1, 4, 4)), "y": np.array([0, 1, 2, 0]), "classes": np.array(["a", "b"])},
     r"expected labels in \[0, 1\], found values in \[0, 2\]"),
    ({"x": np.zeros((4, 1, 5, 4)), "y": np.zeros(4)}, r"expected images of shape .*\(N, 1, 4, 4\).*found shape \(4, 1, 5, 4\)"),
    ({"x": np.full((4, 1, 4, 4), np.nan), "y": np.zeros(4)}, "NaN"),
    ({"x": np.where(np.arange(64).reshape(4, 1, 4, 4) == 37, np.inf, 0.0), "y": np.zeros(4)},
     r"found 1 NaN/inf values \(the first, inf, in sample 2\)"),
    ({"x": np.zeros((4, 1, 4, 4)), "y": np.zeros((4, 2))}, "1-D vector"),
    ({"x": np.zeros((4, 1, 4, 4)), "y": np.zeros(4), "x_test": np.zeros((2, 1, 4, 4))}, "expected key 'y_test'"),
    ({"x": np.zeros((4, 1, 4, 4)), "y": np.zeros(4), "classes": np.array(["a", "b", "a", "c", "b"])},
     "key 'classes' names 'a', 'b' more than once"),
    ({"x": np.zeros((4, 1, 4, 4)), "y": np.array(["a", "b", "a", "z"]), "classes": np.array(["a", "b"])},
     r"key 'y': class name\(s\) z are not in key 'classes'"),
    ({"X": np.zeros((4, 1, 4, 4)), "y": np.zeros(4)}, r"expected key 'x' .*\(did you mean 'X'\?\)"),
])
def test_npz_malformed(tmp_path, arrays, message):
    p = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(DataConfig(dataset="npz", path=str(p)), (1, 4, 4))
    assert str(p) in str(e.value)


def test_npz_garbage_missing_and_pickled(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="bad.npz.*expected an .npz archive"):
        load_dataset(DataConfig(dataset="npz", path=str(bad)), (1, 4, 4))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "nope.npz")), (1, 4, 4))
    p = _npz(tmp_path, "obj.npz", x=np.zeros((2, 1, 4, 4)), y=np.array([0, "a"], dtype=object))
    with pytest.raises(DataError, match="pickled"):
        load_dataset(DataConfig(dataset="npz", path=str(p)), (1, 4, 4))


# --------------------------------------------------------------------------- mnist (IDX)

def _idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def _write_mnist(folder, n_train=30, n_test=10, gz=True, dotted=False):
    folder.mkdir(exist_ok=True)
    files = {"train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
             "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8)}
    for name, arr in files.items():
        name = name.replace("-idx", ".idx") if dotted else name
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as f:
                f.write(_idx_bytes(arr))
        else:
            (folder / name).write_bytes(_idx_bytes(arr))
    return files


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (False, True)])
def test_mnist_idx(tmp_path, gz, dotted):
    files = _write_mnist(tmp_path / "m", gz=gz, dotted=dotted)
    ds = load_dataset(DataConfig(dataset="mnist", path=str(tmp_path / "m"), normalize="none"), (1, 28, 28))
    assert [len(s[1]) for s in (ds.train, ds.val, ds.test)] == [25, 5, 10]
    assert np.allclose(ds.test[0][:, 0] * 255, files["t10k-images-idx3-ubyte"])
    fm = load_dataset(DataConfig(dataset="fashion_mnist", path=str(tmp_path / "m")), (1, 28, 28))
    assert fm.classes[9] == "Ankle boot"


def test_idx_truncated_and_wrong_magic(tmp_path):
    _write_mnist(tmp_path / "m", gz=False)
    f = tmp_path / "m" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte': truncated: expected 23536 bytes.*found 23529"):
        load_dataset(DataConfig(dataset="mnist", path=str(tmp_path / "m")), (1, 28, 28))
    g = tmp_path / "m" / "t10k-labels-idx1-ubyte"
    g.write_bytes(b"\x00\x00\x08\x03" + g.read_bytes()[4:])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte'.*magic number 0x00000801 .*, found 0x00000803"):
        read_idx(g, ndim=1)
    h = tmp_path / "junk.gz"
    h.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="junk.gz.*gzip"):
        read_idx(h)
    with pytest.raises(DataError, match="expected the IDX file 't10k-images-idx3-ubyte'"):
        (tmp_path / "m" / "t10k-images-idx3-ubyte").unlink()
        load_dataset(DataConfig(dataset="mnist", path=str(tmp_path / "m")), (1, 28, 28))


def test_idx_gzip_without_suffix_is_named_and_differing_copies_are_noted(tmp_path):
    _write_mnist(tmp_path / "m", gz=True)
    gz = tmp_path / "m" / "train-labels-idx1-ubyte.gz"
    plain = tmp_path / "m" / "train-labels-idx1-ubyte"
    gz.rename(plain)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte': .*\(gzip-compressed data: name it "
                                        r"train-labels-idx1-ubyte.gz\)"):
        load_dataset(DataConfig(dataset="mnist", path=str(tmp_path / "m")), (1, 28, 28))
    plain.rename(gz)
    plain.write_bytes(_idx_bytes(np.zeros(30, np.uint8)))   # a plain copy with other labels beside the .gz
    ds = load_dataset(DataConfig(dataset="mnist", path=str(tmp_path / "m"), val_fraction=0), (1, 28, 28))
    assert ds.notes == [f"note: '{tmp_path / 'm'}' holds train-labels-idx1-ubyte, train-labels-idx1-ubyte.gz with "
                        f"different contents; reading train-labels-idx1-ubyte"]
    assert not ds.train[1].any()
    with gzip.open(gz, "rb") as f:
        plain.write_bytes(f.read())   # the same data twice (gunzip -k): nothing to say
    assert load_dataset(DataConfig(dataset="mnist", path=str(tmp_path / "m")), (1, 28, 28)).notes == []


def test_idx_wrong_type_byte_is_named_before_the_size(tmp_path):
    """A float32 labels file has a valid IDX header: its type byte is reported, not a 'truncated' file;
    1-D shapes print as Python tuples."""
    _write_mnist(tmp_path / "m", gz=False)
    g = tmp_path / "m" / "train-labels-idx1-ubyte"
    g.write_bytes(b"\x00\x00\x0D\x01" + g.read_bytes()[4:])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte': expected an IDX file with magic number "
                                        r"0x00000801 \(uint8, 1 dimension: labels\), found 0x00000D01 "
                                        r"\(float32, 1 dimension: labels\)"):
        load_dataset(DataConfig(dataset="mnist", path=str(tmp_path / "m")), (1, 28, 28))
    g.write_bytes(b"\x00\x00\x08\x01" + g.read_bytes()[4:] + b"x")
    with pytest.raises(DataError, match=r"has trailing data: expected 38 bytes \(header \+ \(30,\) uint8"):
        read_idx(g, ndim=1, dtype="uint8")


def test_mnist_wrong_input_shape(tmp_path):
    _write_mnist(tmp_path / "m")
    with pytest.raises(DataError, match=r"\(1, 28, 28\).*input_shape is \(3, 32, 32\)"):
        load_dataset(DataConfig(dataset="mnist", path=str(tmp_path / "m")), (3, 32, 32))


# --------------------------------------------------------------------------- cifar10

def _py2_style(obj) -> bytes:
    """Protocol-2 pickle naming numpy.core.multiarray like the real (Python 2) CIFAR files."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _py2_batch(data: np.ndarray, labels) -> bytes:
    """A batch byte-for-byte in the layout of the real files (Python 2 cPickle, protocol 2):
    py2 ``str`` as BINSTRING opcodes, numpy.core.multiarray._reconstruct + BUILD state."""
    def s(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v):
        return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)

    out = b"\x80\x02}q\x00(" + s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
    out += b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
    out += b"(" + i(3) + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + i(0) + b"tb"
    out += b"\x89" + s(data.tobytes()) + b"tb"
    out += s(b"labels") + b"](" + b"".join(i(int(v)) for v in labels) + b"eu."
    return out


def _write_cifar(folder, n=6, str_keys=False):
    folder.mkdir(parents=True, exist_ok=True)
    k = (lambda s: s) if str_keys else (lambda s: s.encode())
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {k("batch_label"): b"x", k("labels"): [int(v) for v in RNG.integers(0, 10, n)],
             k("data"): RNG.integers(0, 256, (n, 3072), dtype=np.uint8), k("filenames"): [b"a.png"] * n}
        if str_keys:
            (folder / name).write_bytes(pickle.dumps(d, protocol=4))
        elif name == "data_batch_1":
            (folder / name).write_bytes(_py2_style(d))     # Python 3, protocol 2: bytes via _codecs
        else:
            (folder / name).write_bytes(_py2_batch(d[b"data"], d[b"labels"]))
    meta = {k("label_names"): [c.encode() for c in "abcdefghij"], k("num_vis"): 3072}
    (folder / "batches.meta").write_bytes(_py2_style(meta))


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar10(tmp_path, str_keys):
    _write_cifar(tmp_path / "cifar-10-batches-py", str_keys=str_keys)
    ds = load_dataset(DataConfig(dataset="cifar10", path=str(tmp_path), val_fraction=0.2), (3, 32, 32))
    assert ds.train[0].shape == (24, 3, 32, 32) and len(ds.val[1]) == 6 and len(ds.test[1]) == 6
    assert ds.classes == list("abcdefghij") and len(ds.mean) == 3
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes(),
                       encoding="bytes")
    data = raw[b"data"] if b"data" in raw else raw["data"]
    x = ds.test[0] * np.array(ds.std, np.float32)[:, None, None] + np.array(ds.mean, np.float32)[:, None, None]
    assert np.allclose(x * 255, data.reshape(-1, 3, 32, 32), atol=1e-3)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_cifar_refuses_code_execution(tmp_path):
    folder = tmp_path / "c"
    _write_cifar(folder)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="data_batch_3'.*unsafe pickle.*refused global '(posix|nt).system'"):
        load_dataset(DataConfig(dataset="cifar10", path=str(folder)), (3, 32, 32))
    assert not marker.exists()


def test_cifar_malformed(tmp_path):
    folder = tmp_path / "c"
    _write_cifar(folder)
    (folder / "data_batch_2").write_bytes(_py2_style({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"data_batch_2'.*uint8 array \(N, 3072\), found uint8 array of shape \(2, 100\)"):
        load_dataset(DataConfig(dataset="cifar10", path=str(folder)), (3, 32, 32))
    (folder / "data_batch_2").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_2'.*unreadable"):
        load_dataset(DataConfig(dataset="cifar10", path=str(folder)), (3, 32, 32))
    (folder / "data_batch_2").write_bytes(_py2_style({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}))
    with pytest.raises(DataError, match=r"labels in \[0, 9\]"):
        load_dataset(DataConfig(dataset="cifar10", path=str(folder)), (3, 32, 32))
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="missing test_batch"):
        load_dataset(DataConfig(dataset="cifar10", path=str(folder)), (3, 32, 32))


def test_safe_pickle_allows_plain_arrays(tmp_path):
    p = tmp_path / "a.pkl"
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    for proto in (2, 5):
        p.write_bytes(pickle.dumps({"a": arr, "b": b"bytes"}, protocol=proto))
        out = safe_load_pickle(p)
        assert np.array_equal(out["a"], arr) and out["b"] == b"bytes"


# --------------------------------------------------------------------------- image folder and images

def _write_images(root):
    for cls, fmt, colour in (("cat", "PNG", (200, 10, 10)), ("dog", "JPEG", (10, 10, 200))):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("RGB", (12, 10), colour).save(root / cls / f"{i}.{'png' if fmt == 'PNG' else 'jpg'}", fmt)


def test_image_folder(tmp_path):
    _write_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("ignored")
    ds = load_dataset(DataConfig(dataset="image_folder", path="imgs", val_fraction=0.25, test_fraction=0.25,
                                 normalize="none"), (3, 8, 8), base_dir=str(tmp_path))
    assert ds.classes == ["cat", "dog"]
    assert [len(s[1]) for s in (ds.train, ds.val, ds.test)] == [4, 2, 2]
    x, y = ds.train
    assert x.shape == (4, 3, 8, 8)
    assert np.allclose(x[y == 0][:, 0], 200 / 255, atol=0.02) and np.allclose(x[y == 1][:, 2], 200 / 255, atol=0.03)
    grey = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs")), (1, 5, 5))
    assert grey.train[0].shape[1:] == (1, 5, 5)


def test_image_folder_corrupt_and_empty(tmp_path):
    _write_images(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "dog" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match="2.jpg'.*Pillow can read"):
        load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs")), (3, 8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "empty")), (3, 8, 8))


def test_read_image_and_inputs(tmp_path):
    im = np.zeros((16, 16), np.uint8)
    im[4:12, 7:9] = 255
    Image.fromarray(im).save(tmp_path / "one.png")
    a = read_image(tmp_path / "one.png", (1, 8, 8), scale=16.0)
    assert a.shape == (1, 8, 8) and a.dtype == np.float32 and a.max() <= 16 and a[0, 4, 3:5].min() > 7
    inv = read_image(tmp_path / "one.png", (1, 16, 16), invert=True)
    assert inv[0, 0, 0] == 1.0 and inv[0, 5, 7] == 0.0
    rgb = read_image(tmp_path / "one.png", (3, 16, 16))
    assert rgb.shape == (3, 16, 16) and np.array_equal(rgb[0], rgb[2])
    np.save(tmp_path / "b.npy", np.ones((2, 1, 8, 8), np.float32))
    np.save(tmp_path / "s.npy", np.full((8, 8), 255, np.uint8))
    x = read_inputs([tmp_path / "one.png", tmp_path / "b.npy", tmp_path / "s.npy"], (1, 8, 8), scale=16.0)
    assert x.shape == (4, 1, 8, 8) and x[1].max() == 1.0 and np.allclose(x[3], 16.0)


def test_read_inputs_errors(tmp_path):
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"c.png'.*expected an image Pillow can read \(.png, .jpg, .jpeg, .bmp"):
        read_inputs([tmp_path / "c.png"], (1, 8, 8))
    np.save(tmp_path / "w.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"w.npy'.*\(N, 1, 8, 8\).*found \(2, 3, 8, 8\)"):
        read_inputs([tmp_path / "w.npy"], (1, 8, 8))
    with pytest.raises(DataError, match="suffix '.txt'"):
        read_inputs([tmp_path / "a.txt"], (1, 8, 8))
    with pytest.raises(DataError, match="does not exist"):
        read_inputs([tmp_path / "missing.png"], (1, 8, 8))


def _digit_8_and_16_bit(folder):
    """docs/images/digit3.png as an 8-bit and a 16-bit PNG (each 8-bit level v becomes v * 257)."""
    grey = np.asarray(Image.open("docs/images/digit3.png").convert("L"))
    Image.fromarray(grey).save(folder / "d8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "d16.png")
    assert Image.open(folder / "d16.png").mode == "I;16"
    return folder / "d8.png", folder / "d16.png"


def test_16_bit_png_reads_like_its_8_bit_version(tmp_path):
    """convert("L") clips 16-bit values at 255 (a 50 % grey read as 1.0); they are scaled by 65535."""
    d8, d16 = _digit_8_and_16_bit(tmp_path)
    for shape in ((1, 64, 64), (1, 8, 8), (3, 96, 96), (4, 64, 64)):
        a, b = read_image(d8, shape), read_image(d16, shape)
        assert a.shape == b.shape == shape and np.abs(a - b).max() <= 1 / 255
    half = tmp_path / "half.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(half)
    assert np.allclose(read_inputs([half], (1, 4, 4), invert=True), 1 - 32768 / 65535)


def test_image_folder_reads_16_bit_pngs(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        _digit_8_and_16_bit(tmp_path / "imgs" / cls)
    ds = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs"), normalize="none"),
                      (1, 16, 16))
    x = np.concatenate([ds.train[0], ds.val[0], ds.test[0]])
    assert len(x) == 4 and np.abs(x - x[0]).max() <= 1 / 255     # one picture, twice 8-bit and twice 16-bit


def test_float_and_32_bit_images_in_range_or_refused(tmp_path):
    """Mode F is used as it is within [0, 1]; other ranges cannot be mapped sensibly: refused by name."""
    ramp = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    Image.fromarray(ramp).save(tmp_path / "f.tif")
    assert np.allclose(read_image(tmp_path / "f.tif", (1, 4, 4))[0], ramp)
    Image.fromarray(ramp * 1000).save(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"big.tif': grey image of mode F holds values 0..1000; expected finite"):
        read_image(tmp_path / "big.tif", (1, 4, 4))
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(DataError, match=r"i.tif': grey image of mode I holds values 70000..70000; expected 0..65535"):
        read_image(tmp_path / "i.tif", (1, 4, 4))


# --------------------------------------------------------------------------- batching / normalisation

def test_iterate_batches():
    x, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10)
    sizes = [len(b[1]) for b in iterate_batches(x, y, 4, shuffle=False)]
    assert sizes == [4, 4, 2]
    assert [len(b[1]) for b in iterate_batches(x, y, 4, False, drop_last=True)] == [4, 4]
    a = [b[1] for b in iterate_batches(x, y, 3, True, np.random.default_rng(7))]
    b = [b[1] for b in iterate_batches(x, y, 3, True, np.random.default_rng(7))]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(10)) and not np.array_equal(np.concatenate(a), y)
    assert all(np.array_equal(xb[:, 0], yb) for xb, yb in iterate_batches(x, y, 3, True, np.random.default_rng(1)))


def test_prepare_matches_training_normalisation():
    ds = load_dataset(DataConfig(), (1, 8, 8))
    raw = ds.test[0] * ds.std[0] + ds.mean[0]
    assert np.allclose(ds.prepare(raw), ds.test[0], atol=1e-5)
    assert np.allclose(apply_normalization(np.zeros((1, 1, 2, 2), np.float32), ds.mean, ds.std), ds.background[0])


def test_plugin_dataset_through_registry():
    from cnngraph.registry import get_registry
    from cnngraph.train.data import LOADERS, RawSplits, finish_dataset

    def toy(cfg, input_shape, seed=0, base_dir=None):
        x = np.arange(20 * 4, dtype=np.float32).reshape(20, 1, 2, 2)
        return finish_dataset(RawSplits(train=(x, np.arange(20) % 2), classes=["a", "b"], source="toy"), cfg, seed)

    reg = get_registry()
    assert set(LOADERS) <= set(reg.datasets)
    reg.add_dataset("toy_test_data", toy)
    try:
        ds = load_dataset(DataConfig(dataset="toy_test_data", val_fraction=0.2), (1, 2, 2))
        assert len(ds.train[1]) == 16 and len(ds.val[1]) == 4 and ds.source == "toy"
    finally:
        del reg.datasets["toy_test_data"]
        reg.owner.pop(("datasets", "toy_test_data"), None)


def test_read_inputs_accepts_channels_last_npy_like_the_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    np.save(tmp_path / "nhwc.npy", nchw.transpose(0, 2, 3, 1))
    np.save(tmp_path / "hwc.npy", nchw[0].transpose(1, 2, 0))
    np.save(tmp_path / "nchw.npy", nchw)
    want = read_inputs([tmp_path / "nchw.npy"], (3, 16, 16))
    np.testing.assert_array_equal(read_inputs([tmp_path / "nhwc.npy"], (3, 16, 16)), want)
    np.testing.assert_array_equal(read_inputs([tmp_path / "hwc.npy"], (3, 16, 16)), want[:1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int16])
def test_npz_eight_bit_values_in_wider_dtypes_read_like_uint8(tmp_path, dtype):
    """uint8 images saved as float or int64 hold 0..255: read in [0, 1] like uint8, with a note (PNGs at
    predict time are read in [0, 1], so [0, 255] training data would silently mismatch them)."""
    x = RNG.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8)
    y = np.arange(20) % 2
    u8 = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "u8.npz", x=x, y=y)), normalize="none"),
                      (1, 4, 4))
    wide = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "w.npz", x=x.astype(dtype), y=y,
                                                                 x_test=x[:4].astype(dtype), y_test=y[:4])),
                                   normalize="none"), (1, 4, 4))
    assert np.array_equal(wide.train[0], u8.train[0]) and wide.pixel_scale == 1.0
    assert wide.test[0].max() <= 1.0 and wide.pixel_range[1] <= 1.0
    assert len(wide.notes) == 1 and "w.npz' key 'x'" in wide.notes[0] and "scaled by 1/255" in wide.notes[0]
    assert u8.notes == []


def test_npz_floats_outside_eight_bit_range_are_kept(tmp_path):
    """Standardised data (negatives) and [0, 1] data are taken as they are, and the raw range is recorded."""
    x = RNG.standard_normal((20, 1, 4, 4)).astype(np.float32) * 3
    y = np.arange(20) % 2
    ds = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, x=x, y=y)), normalize="none",
                                 val_fraction=0), (1, 4, 4))
    assert ds.notes == [] and ds.pixel_range == (float(x.min()), float(x.max()))
    unit = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "u.npz", x=np.abs(x) / 100, y=y)),
                                   normalize="none", val_fraction=0), (1, 4, 4))
    assert unit.notes == [] and np.allclose(unit.train[0], np.abs(x) / 100)
    over = np.clip(RNG.random((20, 1, 4, 4)) * 1.05, 0, None).astype(np.float32)   # [0, 1] data overshooting a little
    kept = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "o.npz", x=over, y=y)),
                                   normalize="none", val_fraction=0), (1, 4, 4))
    assert over.max() > 1 and kept.notes == [] and np.allclose(kept.train[0], over)


def test_npz_pixels_setting_overrides_the_eight_bit_rule(tmp_path):
    """pixels: as_is keeps numbers in [0, 255] that are not pixels (depths, counts) and uint8 as they are;
    8bit scales even data whose maximum is below 2; 8bit on numbers outside [0, 255] is an error."""
    y = np.arange(20) % 2
    depth = (RNG.random((20, 1, 4, 4)) * 200).astype(np.float32)
    path = str(_npz(tmp_path, "d.npz", x=depth, y=y))
    auto = load_dataset(DataConfig(dataset="npz", path=path, normalize="none", val_fraction=0), (1, 4, 4))
    kept = load_dataset(DataConfig(dataset="npz", path=path, normalize="none", val_fraction=0, pixels="as_is"),
                        (1, 4, 4))
    assert np.allclose(auto.train[0], depth / 255) and "pixels: as_is" in auto.notes[0]
    assert kept.notes == [] and np.array_equal(kept.train[0], depth) and kept.pixel_range[1] == float(depth.max())
    u8 = RNG.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8)
    raw = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "u.npz", x=u8, y=y)), normalize="none",
                                  val_fraction=0, pixels="as_is"), (1, 4, 4))
    assert np.array_equal(raw.train[0], u8.astype(np.float32))
    dark = np.full((20, 1, 4, 4), 1.0, np.float32)    # a dark 8-bit image: max 1 < 2, auto would keep it
    forced = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "k.npz", x=dark, y=y)),
                                     normalize="none", val_fraction=0, pixels="8bit"), (1, 4, 4))
    assert np.allclose(forced.train[0], 1 / 255)
    scaled_u8 = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "u2.npz", x=u8, y=y)),
                                        normalize="none", val_fraction=0, pixels="8bit"), (1, 4, 4))
    assert np.allclose(scaled_u8.train[0], u8 / 255)    # uint8 is scaled once, not twice
    with pytest.raises(DataError, match=r"n.npz'.*pixels is 8bit.*\[-1, 3\].*expected values in \[0, 255\]"):
        load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "n.npz", x=np.linspace(-1, 3, 320).reshape(
            20, 1, 4, 4), y=y)), normalize="none", val_fraction=0, pixels="8bit"), (1, 4, 4))
    with pytest.raises(ValueError, match="pixels: as_is is for dataset: npz"):
        DataConfig(dataset="digits", pixels="as_is")


def test_image_folder_skips_hidden_files_and_reads_sub_folders(tmp_path):
    """macOS's ``._x.png`` / ``.DS_Store`` are skipped like dot-folders; images in sub-folders of a class
    folder belong to it (as in torchvision's ImageFolder)."""
    _write_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "imgs" / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "imgs" / "dog" / ".thumbs").mkdir()
    (tmp_path / "imgs" / "dog" / ".thumbs" / "0.png").write_bytes(b"not an image")
    sub = tmp_path / "imgs" / "dog" / "2023" / "june"
    sub.mkdir(parents=True)
    Image.new("RGB", (12, 10), (10, 10, 200)).save(sub / "5.png")
    ds = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs"), val_fraction=0),
                      (3, 8, 8))
    assert ds.classes == ["cat", "dog"] and np.bincount(ds.train[1]).tolist() == [4, 5]
    (tmp_path / "only_sub" / "cat" / "a").mkdir(parents=True)
    (tmp_path / "only_sub" / "dog").mkdir()
    with pytest.raises(DataError, match=r"\(or their sub-folders\), found none"):
        load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "only_sub")), (3, 8, 8))


def _bar_with_orientation(path, orientation=None):
    """A 6x10 grey picture whose stored pixels show a horizontal bar (and a dot that tells every flip apart),
    saved with EXIF Orientation ``orientation`` (none: no EXIF)."""
    a = np.zeros((6, 10), np.uint8)
    a[2, 1:9], a[4, 8] = 255, 128
    if orientation is None:
        Image.fromarray(a).save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(a).save(path, exif=exif.tobytes())
    return a


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_images_are_read_upright_as_their_exif_orientation_says(tmp_path, suffix, orientation):
    """Viewers show an image turned by its EXIF orientation: training data, predict and explain read it so too
    (Pillow's exif_transpose is the reference)."""
    path = tmp_path / f"bar{suffix}"
    stored = _bar_with_orientation(path, orientation)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)), np.float32) / 255
    assert upright.shape == ((10, 6) if orientation >= 5 else (6, 10))
    if orientation > 1 and upright.shape == stored.shape:
        assert not np.array_equal(upright, np.asarray(Image.open(path), np.float32) / 255)
    shape = (1,) + upright.shape
    assert np.array_equal(read_image(path, shape)[0], upright)
    assert np.array_equal(read_inputs([path], shape)[0, 0], upright)      # predict and explain read this way


def test_an_image_without_exif_is_read_as_stored(tmp_path):
    stored = _bar_with_orientation(tmp_path / "plain.png")
    assert "exif" not in Image.open(tmp_path / "plain.png").info
    assert np.array_equal(read_image(tmp_path / "plain.png", (1, 6, 10))[0], stored / np.float32(255))


def test_image_folder_reads_a_rotated_jpeg_upright(tmp_path):
    """The probe's case: stored as a horizontal bar, EXIF orientation 6 (shown turned a quarter clockwise)."""
    for cls, orientation in (("flat", None), ("turned", 6)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        _bar_with_orientation(tmp_path / "imgs" / cls / "0.jpg", orientation)
    ds = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs"), normalize="none",
                                 val_fraction=0), (1, 10, 10))
    x, y = ds.train
    turned = x[y == 1][0, 0]
    rows, cols = (turned > 0.5).sum(axis=1).max(), (turned > 0.5).sum(axis=0).max()
    assert cols > rows      # a vertical bar: one column holds most of it
    assert np.array_equal(x[y == 1][0], read_image(tmp_path / "imgs" / "turned" / "0.jpg", (1, 10, 10)))


def test_image_folder_reads_every_common_format_and_notes_the_skipped_files(tmp_path):
    """BMP, GIF (first frame), TIFF and WebP besides PNG and JPEG, as predict reads them; other files are
    counted in one note, hidden files left out silently."""
    from cnngraph.train.images import image_suffixes
    red, blue = (200, 0, 0), (0, 0, 200)
    (tmp_path / "imgs" / "c0").mkdir(parents=True)
    (tmp_path / "imgs" / "c1" / "more").mkdir(parents=True)
    Image.new("RGB", (8, 8), blue).save(tmp_path / "imgs" / "c0" / "0.png")
    c1 = tmp_path / "imgs" / "c1"
    Image.new("RGB", (8, 8), red).save(c1 / "a.bmp")
    Image.new("RGB", (8, 8), red).save(c1 / "b.TIF")
    Image.new("RGB", (8, 8), red).save(c1 / "more" / "c.JPG")
    Image.new("RGB", (8, 8), red).save(c1 / "d.gif", save_all=True, append_images=[Image.new("RGB", (8, 8), blue)])
    webp = ".webp" in image_suffixes()
    if webp:
        Image.new("RGB", (8, 8), red).save(c1 / "e.webp", lossless=True)
    for name in ("notes.txt", "labels.csv", "more/extra.csv", "README"):
        (c1 / name).write_text("not an image")
    (c1 / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    ds = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs"), normalize="none",
                                 val_fraction=0), (3, 4, 4))
    x, y = ds.train
    assert np.bincount(y).tolist() == [1, 4 + webp]
    assert np.allclose(x[y == 1][:, 0], 200 / 255, atol=0.02) and np.allclose(x[y == 1][:, 2], 0, atol=0.02)
    assert ds.notes == [f"note: '{tmp_path / 'imgs'}': skipped 4 file(s) that are not images "
                        f"({', '.join(image_suffixes())}): 2 .csv, 1 (no suffix), 1 .txt"]
    images = sorted(p for p in c1.rglob("*") if p.suffix.lower() in image_suffixes())
    assert np.allclose(read_inputs(images, (3, 4, 4)), x[y == 1], atol=1e-6)   # what predict reads
    for f in c1.rglob("*"):
        if f.is_file() and f.suffix.lower() not in image_suffixes():
            f.unlink()
    assert load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs")), (3, 4, 4)).notes == []


def test_loader_failures_are_named_not_wrapped(tmp_path):
    """Failures that used to reach the generic 'loader failed' wrapper, or read oddly, name the file and what
    was expected."""
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(DataError, match=r"folder.npz': is a folder; expected an .npz file"):
        load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "folder.npz")), (1, 4, 4))
    y = np.array([0, 1, np.nan, 0])
    with pytest.raises(DataError, match=r"key 'y': expected integer class labels, found NaN at index 2$"):
        load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, x=np.zeros((4, 1, 4, 4)), y=y))), (1, 4, 4))
    y = np.array([0, 1, 1, -1])
    with pytest.raises(DataError, match=r"key 'y': expected labels >= 0, found -1 at index 3$"):
        load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, x=np.zeros((4, 1, 4, 4)), y=y))), (1, 4, 4))
    folder = tmp_path / "c"
    _write_cifar(folder)
    (folder / "data_batch_2").write_bytes(_py2_style({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 2 ** 70]}))
    with pytest.raises(DataError, match=r"data_batch_2' labels: expected labels in \[0, 9\], found "
                                        rf"{2 ** 70} at index 1$"):
        load_dataset(DataConfig(dataset="cifar10", path=str(folder)), (3, 32, 32))
    _write_cifar(folder)
    (folder / "batches.meta").write_bytes(b"\x80\x02}q\x00(")
    with pytest.raises(DataError, match=r"batches.meta': expected the CIFAR-10 meta file \(a pickled dict with "
                                        r"'label_names'\), found an unreadable"):
        load_dataset(DataConfig(dataset="cifar10", path=str(folder)), (3, 32, 32))


def test_read_inputs_refuses_a_folder_by_name(tmp_path):
    (tmp_path / "pics").mkdir()
    with pytest.raises(DataError, match=r"pics': is a folder; expected image files \(.png, .jpg, .jpeg, .bmp, .gif, "
                                         r"\.tif, .tiff(, .webp)?\) or an .npy"):
        read_inputs([tmp_path / "pics"], (1, 4, 4))


def test_images_above_pillows_size_limits_get_a_note_or_a_clear_refusal(tmp_path, monkeypatch, capsys):
    """Pillow warns above MAX_IMAGE_PIXELS (a raw warning line with its own path) and refuses above twice
    that: the first is a one-line note naming the file (the image is still read), the second a DataError."""
    import warnings
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)   # as a 9500x9500 image against the real limit
    Image.new("L", (12, 12), 255).save(tmp_path / "big.png")
    Image.new("L", (15, 15), 255).save(tmp_path / "huge.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = read_image(tmp_path / "big.png", (1, 4, 4))
    assert x.shape == (1, 4, 4)
    assert capsys.readouterr().err == (f"note: '{tmp_path / 'big.png'}' is 12x12 pixels (0.000144 megapixels, above Pillow's "
                                       f"warning limit of 0.0001); reading it takes a while and much memory\n")
    with pytest.raises(DataError, match=r"huge.png': the image is too large to read: Image size \(225 pixels\) "
                                        r"exceeds limit of 200 pixels"):
        read_image(tmp_path / "huge.png", (1, 4, 4))


def _write_split_tree(root, splits=("train", "val"), classes=("cat", "dog"), n=3):
    for split in splits:
        for k, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (200 * (k == 0), 0, 200 * (k == 1))).save(root / split / cls / f"{i}.png")


def test_image_folder_takes_train_val_test_folders_as_splits_not_classes(tmp_path):
    """root/{train,val,test}/<class>/ is the splits' layout: two classes cat and dog, not train and val."""
    _write_split_tree(tmp_path / "imgs", ("train", "validation", "test"), n=3)
    ds = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs"), normalize="none"), (3, 8, 8))
    assert ds.classes == ["cat", "dog"]
    assert [len(s[1]) for s in (ds.train, ds.val, ds.test)] == [6, 6, 6]
    assert np.allclose(ds.val[0][ds.val[1] == 1][:, 2], 200 / 255, atol=0.01)   # dog is blue in val too
    assert any("split folders" in n for n in ds.notes)
    only_train = tmp_path / "only_train"
    _write_split_tree(only_train, ("train",), n=4)
    ds = load_dataset(DataConfig(dataset="image_folder", path=str(only_train), val_fraction=0.25), (3, 8, 8))
    assert ds.classes == ["cat", "dog"] and [len(ds.train[1]), len(ds.val[1])] == [6, 2]


def test_image_folder_split_layout_mistakes_are_refused_or_noted(tmp_path):
    _write_split_tree(tmp_path / "a", ("train",), ("cat", "dog"))
    _write_split_tree(tmp_path / "a", ("val",), ("cat", "horse"))
    with pytest.raises(DataError, match=r"'.*val': class folder\(s\) horse are not among the training classes"):
        load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "a")), (3, 8, 8))
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "train" / "0.png")
    with pytest.raises(DataError, match="named like splits, but train, val hold no class folders"):
        load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "b")), (3, 8, 8))
    _write_split_tree(tmp_path / "c", ("train",), ("cat", "dog"))
    _write_split_tree(tmp_path / "c", ("test",), ("cat",))
    ds = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "c")), (3, 8, 8))
    assert ds.classes == ["cat", "dog"] and set(ds.test[1].tolist()) == {0}
    assert any("the test split has no sample of 1 class: dog" in n for n in ds.notes)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_image_folder_follows_linked_sub_folders_once(tmp_path):
    _write_images(tmp_path / "imgs")
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(3):
        Image.new("RGB", (12, 10), (200, 10, 10)).save(extra / f"e{i}.png")
    os.symlink(extra, tmp_path / "imgs" / "cat" / "more")
    os.symlink(tmp_path / "imgs" / "cat", extra / "loop")   # a loop back to the class folder
    ds = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs"), val_fraction=0), (3, 8, 8))
    assert np.bincount(ds.train[1]).tolist() == [4 + 3, 4]
    assert any("did not read 1 linked folder(s) again" in n and "loop" in n for n in ds.notes)


def test_image_folder_names_every_unreadable_image_or_skips_them(tmp_path):
    _write_images(tmp_path / "imgs")
    for name in ("cat/0.png", "dog/1.jpg", "dog/3.jpg"):
        (tmp_path / "imgs" / name).write_bytes(b"broken")
    cfg = dict(dataset="image_folder", path=str(tmp_path / "imgs"), val_fraction=0)
    with pytest.raises(DataError, match=r"3 image files cannot be read: .*cat/0.png'.*dog/1.jpg'.*dog/3.jpg'.*"
                                        r"skip_unreadable: true") as err:
        load_dataset(DataConfig(**cfg), (3, 8, 8))
    assert "Traceback" not in str(err.value)
    ds = load_dataset(DataConfig(**cfg, skip_unreadable=True), (3, 8, 8))
    assert np.bincount(ds.train[1]).tolist() == [3, 2]
    assert any("skipped 3 unreadable image files" in n for n in ds.notes)
    with pytest.raises(Exception, match="skip_unreadable is for dataset: image_folder"):
        DataConfig(dataset="npz", path="d.npz", skip_unreadable=True)


def test_image_folder_with_an_input_of_two_channels_is_refused_once(tmp_path):
    _write_images(tmp_path / "imgs")
    with pytest.raises(DataError, match=r"^'[^']*imgs': images can feed 1 \(grey\), 3 \(RGB\) or 4"):
        load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "imgs")), (2, 8, 8))


def test_npz_column_labels_and_label_names_are_read(tmp_path):
    x = RNG.random((12, 1, 4, 4)).astype(np.float32)
    y = np.arange(12) % 3
    col = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "col.npz", x=x, y=y[:, None])),
                                  val_fraction=0), (1, 4, 4))
    assert np.array_equal(col.train[1], y)
    names = np.array(["dog", "cat", "emu"])[y]
    ds = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "s.npz", x=x, y=names, x_test=x[:3],
                                                                y_test=names[:3])), val_fraction=0), (1, 4, 4))
    assert ds.classes == ["cat", "dog", "emu"]
    assert np.array_equal(np.array(ds.classes)[ds.train[1]], names)
    assert np.array_equal(np.array(ds.classes)[ds.test[1]], names[:3])
    assert any("holds class names" in n for n in ds.notes)
    given = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, "g.npz", x=x, y=names,
                                                                   classes=np.array(["emu", "dog", "cat"]))),
                                    val_fraction=0), (1, 4, 4))
    assert given.classes == ["emu", "dog", "cat"] and given.train[1][:3].tolist() == [1, 2, 0]


def test_npz_unused_keys_are_noted_with_a_suggestion(tmp_path):
    x, y = np.zeros((8, 1, 4, 4), np.float32), np.arange(8) % 2
    ds = load_dataset(DataConfig(dataset="npz", path=str(_npz(tmp_path, x=x, y=y, x_valid=x[:2], y_valid=y[:2],
                                                               meta=np.arange(3)))), (1, 4, 4))
    note, = [n for n in ds.notes if "not used" in n]
    assert "'x_valid' (did you mean 'x_val'?)" in note and "'y_valid' (did you mean 'y_val'?)" in note
    assert "'meta' not used" in note
    assert len(ds.val[1]) == 2   # carved by val_fraction: x_valid is not read


def test_npz_empty_given_split_is_taken_as_absent_and_missing_classes_are_noted(tmp_path):
    x, y = np.zeros((20, 1, 4, 4), np.float32), np.arange(20) % 2
    p = _npz(tmp_path, x=x, y=y, x_test=x[:0], y_test=y[:0], x_val=x[:4], y_val=np.zeros(4, int),
             classes=np.array(["no", "yes"]))
    ds = load_dataset(DataConfig(dataset="npz", path=str(p), test_fraction=0.2), (1, 4, 4))
    assert len(ds.test[1]) == 4 and len(ds.train[1]) == 16
    assert any("'x_test'/'y_test' hold no samples: taken as no test split" in n for n in ds.notes)
    assert any("the val split has no sample of 1 class: yes" in n for n in ds.notes)
    assert not any("test split has no sample" in n for n in ds.notes)   # carved: stratified
