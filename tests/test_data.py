import io
import pickle
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oneshot.data as data
from oneshot.data import CLASSES, MEAN, STD, Batches, Cifar10, eval_batches, load_cifar10, split_train
from oneshot.errors import UserError

REAL = Path("/work/shared/data/cifar10/cifar10-jpg.tar.gz")


def write_tree(root: Path, per_class: int = 3) -> dict:
    """Classes cat and airplane (written in non-official order) as lossless PNGs, names out of order;
    returns the expected arrays in load order (official class order, then file name)."""
    rng = np.random.default_rng(0)
    expected = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(["airplane", "cat"]):
            folder = root / split / cls
            folder.mkdir(parents=True)
            names = [f"{i:02d}.png" for i in range(per_class)][::-1]
            arrays = {}
            for name in names:
                a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(a).save(folder / name)
                arrays[name] = a
            for name in sorted(arrays):
                xs.append(arrays[name].transpose(2, 0, 1))
                ys.append(label)
        expected[split] = (np.stack(xs), np.array(ys))
    return expected


def check_tree(d: Cifar10, expected: dict):
    assert d.classes == ("airplane", "cat")
    for x, y, split in ((d.train_x, d.train_y, "train"), (d.test_x, d.test_y, "test")):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert tuple(x.shape) == (6, 3, 32, 32)
        np.testing.assert_array_equal(x.numpy(), expected[split][0])
        np.testing.assert_array_equal(y.numpy(), expected[split][1])


def test_image_tree_folder_and_parent(tmp_path):
    expected = write_tree(tmp_path / "cifar" / "extracted")
    check_tree(load_cifar10(tmp_path / "cifar" / "extracted", cache_dir=tmp_path / "c1"), expected)
    check_tree(load_cifar10(str(tmp_path / "cifar"), cache_dir=tmp_path / "c2"), expected)


def test_image_tree_tarball_and_folder_holding_it(tmp_path):
    expected = write_tree(tmp_path / "tree")
    (tmp_path / "dl").mkdir()
    tgz = tmp_path / "dl" / "mini.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:  # files only, in reverse order: the loader must sort
        for f in sorted((tmp_path / "tree").rglob("*.png"), reverse=True):
            tf.add(f, f.relative_to(tmp_path / "tree").as_posix())
    check_tree(load_cifar10(tgz, cache_dir=tmp_path / "c1"), expected)
    check_tree(load_cifar10(tmp_path / "dl", cache_dir=tmp_path / "c2"), expected)
    (tmp_path / "dl" / "other.tgz").write_bytes(b"")
    with pytest.raises(UserError, match="several datasets"):
        load_cifar10(tmp_path / "dl", cache_dir=tmp_path / "c3")
    (tmp_path / "tree").rename(tmp_path / "dl" / "extracted")  # an extracted copy beats the tarballs
    check_tree(load_cifar10(tmp_path / "dl", cache_dir=tmp_path / "c4"), expected)


def test_jpeg_and_grayscale_images_become_rgb(tmp_path):
    write_tree(tmp_path, per_class=1)
    rng = np.random.default_rng(1)
    jpg = tmp_path / "train" / "cat" / "zz.jpg"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(jpg, quality=90)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "train" / "cat" / "zzz.png")
    d = load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert tuple(d.train_x.shape) == (4, 3, 32, 32) and d.train_y.tolist() == [0, 1, 1, 1]
    decoded = np.asarray(Image.open(jpg).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(d.train_x[2].numpy(), decoded)
    for c in range(3):
        np.testing.assert_array_equal(d.train_x[3, c].numpy(), gray)


def write_batches(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Five training batches and a test batch of 2 images each, in the official pickle format."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    raw = rng.integers(0, 256, (12, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, 12)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": raw[2 * i:2 * i + 2], b"labels": labels[2 * i:2 * i + 2].tolist(),
                         b"batch_label": name.encode()}, f)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
    return raw, labels


def check_batches(d: Cifar10, raw: np.ndarray, labels: np.ndarray):
    assert d.classes == CLASSES
    assert tuple(d.train_x.shape) == (10, 3, 32, 32) and tuple(d.test_x.shape) == (2, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.train_y.tolist() == labels[:10].tolist() and d.test_y.tolist() == labels[10:].tolist()
    # Row-major CHW: pixel (c, h, w) of image i is byte c*1024 + h*32 + w.
    for i, c, h, w in [(0, 0, 0, 1), (3, 1, 5, 7), (9, 2, 31, 30)]:
        assert d.train_x[i, c, h, w] == raw[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(d.test_x.reshape(2, -1).numpy(), raw[10:])


def test_python_batches_folder_parent_and_tarball(tmp_path):
    raw, labels = write_batches(tmp_path / "py" / "cifar-10-batches-py")
    check_batches(load_cifar10(tmp_path / "py" / "cifar-10-batches-py", cache_dir=tmp_path / "c1"), raw, labels)
    check_batches(load_cifar10(tmp_path / "py", cache_dir=tmp_path / "c2"), raw, labels)
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tmp_path / "py" / "cifar-10-batches-py", "cifar-10-batches-py")
    check_batches(load_cifar10(tgz, cache_dir=tmp_path / "c3"), raw, labels)


def test_cache_is_used_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    expected = write_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    load_cifar10(tmp_path / "tree", cache_dir=cache)
    (cached,) = cache.glob("cifar10-*.pt")
    monkeypatch.setattr(data, "_decode", lambda *a: pytest.fail("decoded although cached"))
    check_tree(load_cifar10(tmp_path / "tree", cache_dir=cache), expected)
    monkeypatch.undo()
    cached.write_bytes(b"garbage")
    check_tree(load_cifar10(tmp_path / "tree", cache_dir=cache), expected)
    assert torch.load(cached, weights_only=True)["train_x"].shape == (6, 3, 32, 32)
    assert [p.name for p in cache.iterdir()] == [cached.name]  # no leftover temporary files


def test_default_cache_dir_comes_from_env(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree", per_class=1)
    monkeypatch.setenv("ONESHOT_CACHE", str(tmp_path / "envcache"))
    load_cifar10(tmp_path / "tree")
    assert len(list((tmp_path / "envcache").glob("cifar10-*.pt"))) == 1


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("real_cache")


@pytest.mark.skipif(not REAL.exists(), reason=f"{REAL} is absent")
def test_real_cifar10_tarball_and_cache(real_cache):
    d = load_cifar10(REAL.parent, cache_dir=real_cache)
    assert tuple(d.train_x.shape) == (50000, 3, 32, 32) and tuple(d.test_x.shape) == (10000, 3, 32, 32)
    assert d.classes == CLASSES
    assert d.train_y.bincount().tolist() == [5000] * 10 and d.test_y.bincount().tolist() == [1000] * 10
    assert (d.train_y[:-1] <= d.train_y[1:]).all()  # sorted by class
    t = time.perf_counter()
    again = load_cifar10(REAL, cache_dir=real_cache)
    assert time.perf_counter() - t < 2.0
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: p, "no image data found"),
    (lambda p: (p / "train" / "cat").mkdir(parents=True) or (p / "test" / "cat").mkdir(parents=True) or p, "no images"),
    (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "not a .tar.gz"),
])
def test_bad_paths(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load_cifar10(make(tmp_path), cache_dir=tmp_path / "cache")


def test_empty_class_folder(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(UserError, match="class folder train/dog is missing"):
        load_cifar10(tmp_path, cache_dir=tmp_path / "c1")
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(UserError, match="class folder train/dog has no .jpg/.png images"):
        load_cifar10(tmp_path, cache_dir=tmp_path / "c2")


def test_corrupt_and_wrong_size_images(tmp_path):
    write_tree(tmp_path)
    bad = tmp_path / "train" / "cat" / "01.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(UserError, match=r"cannot decode image .*train/cat/01\.png"):
        load_cifar10(tmp_path, cache_dir=tmp_path / "c1")
    Image.new("RGB", (28, 28)).save(bad)  # one image of another size: refused, with the option that fixes it
    with pytest.raises(UserError, match=r"not all of one square size \(28x28, 32x32\); resize them with --task-option size"):
        load_cifar10(tmp_path, cache_dir=tmp_path / "c2")
    resized = load_cifar10(tmp_path, cache_dir=tmp_path / "c3", size=32)
    assert resized.train_x.shape[1:] == (3, 32, 32)


def test_corrupt_pickle_and_tarball(tmp_path):
    write_batches(tmp_path / "b")
    (tmp_path / "b" / "data_batch_3").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(UserError, match="cannot read CIFAR-10 batch .*data_batch_3"):
        load_cifar10(tmp_path / "b", cache_dir=tmp_path / "c1")
    (tmp_path / "b" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="lacks data_batch_3"):
        load_cifar10(tmp_path / "b", cache_dir=tmp_path / "c2")
    tgz = tmp_path / "broken.tar.gz"
    tgz.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    with pytest.raises(UserError, match="cannot read tarball .*broken.tar.gz"):
        load_cifar10(tgz, cache_dir=tmp_path / "c3")


def test_no_path_and_no_network(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no route")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="--data") as e:
        load_cifar10(None, cache_dir=tmp_path)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_no_path_with_bad_checksum_deletes_the_download(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"not cifar"))
    with pytest.raises(UserError, match="MD5"):
        load_cifar10(None, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_no_path_uses_an_archive_already_in_the_cache(tmp_path, monkeypatch):
    raw, labels = write_batches(tmp_path / "src" / "cifar-10-batches-py")
    cache = tmp_path / "cache"
    cache.mkdir()
    with tarfile.open(cache / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", "cifar-10-batches-py")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    check_batches(load_cifar10(None, cache_dir=cache), raw, labels)


def test_split_train_is_a_fixed_shuffle_with_every_class_on_both_sides():
    n = 50000
    ids = torch.arange(n)
    x = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = (ids % 256).to(torch.uint8), (ids // 256).to(torch.uint8)
    d = Cifar10(x, torch.arange(10).repeat_interleave(n // 10), x[:0], ids[:0], CLASSES)
    (wx, wy), (ax, ay) = split_train(d, 25000, 20000)
    assert len(wx) == len(wy) == 25000 and len(ax) == len(ay) == 20000
    w_ids = wx[:, 0, 0, 0].long() + 256 * wx[:, 0, 0, 1].long()
    a_ids = ax[:, 0, 0, 0].long() + 256 * ax[:, 0, 0, 1].long()
    assert len(set(w_ids.tolist()) | set(a_ids.tolist())) == 45000  # disjoint, no repeats
    assert torch.equal(wy, d.train_y[w_ids]) and torch.equal(ay, d.train_y[a_ids])
    assert (wy.bincount(minlength=10) > 2000).all() and (ay.bincount(minlength=10) > 1500).all()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w_ids, perm[:25000]) and torch.equal(a_ids, perm[-20000:])
    with pytest.raises(UserError, match="n_weight"):
        split_train(d, 30000, 25000)


def numbered(n: int, hw: int = 32):
    """Images with distinct random pixels and label = index, so a batch says which images it holds."""
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (n, 3, hw, hw), dtype=torch.uint8, generator=g), torch.arange(n)


def test_batches_shape_dtype_and_normalisation():
    x = torch.full((10, 3, 32, 32), 200, dtype=torch.uint8)
    b = Batches(x, torch.zeros(10, dtype=torch.int64), 4, "cpu", augment=False, seed=0)
    xb, yb = next(b)
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert xb.device.type == "cpu" and b.steps_per_epoch == 2
    for c in range(3):
        assert torch.allclose(xb[:, c], torch.tensor((200 - MEAN[c]) / STD[c]))


def test_augmented_images_are_flipped_windows_of_the_zero_padded_input():
    x, y = numbered(32)
    b = Batches(x, y, 16, "cpu", augment=True, seed=1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    seen = set()
    for _ in range(4):
        xb, yb = b.next()
        raw = (xb * std + mean).round()
        for img, i in zip(raw, yb.tolist()):
            padded = torch.nn.functional.pad(x[i].float(), (4, 4, 4, 4))
            windows = {(dy, dx): padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)}
            matches = [(dy, dx, f) for (dy, dx), w in windows.items() for f in (False, True)
                       if torch.equal(img, w.flip(2) if f else w)]
            assert len(matches) == 1, f"image {i} is no (flipped) window of its padded input"
            seen.add(matches[0])
    assert len({m[2] for m in seen}) == 2 and len({m[:2] for m in seen}) > 20  # really random


def test_same_seed_same_stream_other_seed_other_stream():
    x, y = numbered(40)
    a, b, c = (Batches(x, y, 8, "cpu", True, seed=s) for s in (5, 5, 6))
    for _ in range(12):
        (xa, ya), (xb, yb), (_, yc) = next(a), next(b), next(c)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(ya, yc)


def test_state_dict_resume_is_exact(tmp_path):
    x, y = numbered(40)
    a = Batches(x, y, 8, "cpu", True, seed=7)
    for _ in range(3):
        next(a)
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = Batches(x, y, 8, "cpu", True, seed=123)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert b.epoch == a.epoch == 0
    for _ in range(12):  # across two epoch boundaries
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.epoch == b.epoch == 3
    with pytest.raises(UserError, match="batch"):
        Batches(x, y, 4, "cpu", True, seed=7).load_state_dict(a.state_dict())


def test_epochs_visit_every_image_once():
    x, y = numbered(40)
    b = Batches(x, y, 8, "cpu", augment=True, seed=0)
    orders = []
    for epoch in range(3):
        assert b.epoch == epoch
        orders.append(torch.cat([next(b)[1] for _ in range(b.steps_per_epoch)]))
        assert sorted(orders[-1].tolist()) == list(range(40))
    assert b.epoch == 3 and not torch.equal(orders[0], orders[1])
    dropped = Batches(*numbered(43), 8, "cpu", False, 0)
    ids = torch.cat([next(dropped)[1] for _ in range(dropped.steps_per_epoch)])
    assert len(set(ids.tolist())) == 40 and dropped.epoch == 1
    uneven = Batches(*numbered(43), 8, "cpu", False, 0, drop_last=False)
    assert [len(next(uneven)[1]) for _ in range(uneven.steps_per_epoch)] == [8] * 5 + [3] and uneven.epoch == 1


def test_batch_size_larger_than_the_data():
    with pytest.raises(UserError, match="batch size"):
        Batches(*numbered(4), 8, "cpu", False, 0)


def test_eval_batches_in_order_unaugmented():
    x, y = numbered(10)
    got = list(eval_batches(x, y, 4, "cpu"))
    assert [len(yb) for _, yb in got] == [4, 4, 2]
    xs = torch.cat([xb for xb, _ in got])
    assert torch.equal(torch.cat([yb for _, yb in got]), y)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(xs, (x.float() - mean) / std)
    with pytest.raises(UserError, match="batch size"):
        eval_batches(x, y, 0, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batches_on_cuda_match_cpu():
    x, y = numbered(40)
    cpu, gpu = Batches(x, y, 8, "cpu", True, 3), Batches(x, y, 8, "cuda", True, 3)
    for _ in range(7):
        (xc, yc), (xg, yg) = next(cpu), next(gpu)
        assert xg.is_cuda and torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu())
