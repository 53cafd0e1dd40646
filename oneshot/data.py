"""CIFAR-10 from whatever form the user has, decoded once and cached, then served as tensors on the device.

Search and training steps are small and fast, so the input pipeline keeps the whole training set on the
device and augments whole batches with tensor ops: no DataLoader workers, no per-image Python work.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from oneshot.errors import UserError

__all__ = ["CLASSES", "MEAN", "STD", "Cifar10", "load_cifar10", "split_train", "Batches", "eval_batches"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (125.3, 123.0, 113.9)  # per channel, 0-255 units (the usual CIFAR-10 statistics)
STD = (63.0, 62.1, 66.7)
PAD = 4
_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_MD5 = "c58f30108f718f92721af3b95e74349a"
_TARBALL = (".tar.gz", ".tgz", ".tar")
_IMAGE = (".jpg", ".jpeg", ".png")
_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_LAYOUTS = "train/<class>/*.jpg|png and test/<class>/ folders, cifar-10-batches-py, or a .tar.gz of either"
_NO_NET = ("could not download CIFAR-10 (no network?): "
           "pass --data PATH to a CIFAR-10 folder, tarball, or cifar-10-batches-py")


@dataclass
class Cifar10:
    train_x: torch.Tensor  # uint8 N x 3 x 32 x 32
    train_y: torch.Tensor  # int64 N
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]


def load_cifar10(path: str | os.PathLike | None, cache_dir: str | Path | None = None, size: int | None = None) -> Cifar10:
    """Load CIFAR-10, or any image-folder tree of that layout (any number of classes, any square size);
    ``path=None`` means the user gave no --data, so fall back to the official download. ``size``: resize every
    image to size x size (without it all images must share one square size)."""
    if size is not None and size < 1:
        raise UserError(f"image size {size} must be at least 1")
    cache = Path(cache_dir or os.environ.get("ONESHOT_CACHE") or Path.home() / ".cache" / "oneshot").expanduser()
    src = _find_source(Path(os.fspath(path)).expanduser()) if path is not None else _download(cache)
    cached = cache / f"cifar10-{_cache_key(src)}{'' if size is None else f'-{size}px'}.pt"
    if cached.is_file() and (data := _load_cache(cached)) is not None:
        return data
    data = _parse(_tar_entries(src) if src.is_file() else _dir_entries(src), src, size)
    _save_cache(data, cached)
    return data


def _find_source(p: Path) -> Path:
    """Resolve to the folder or tarball that holds the data, so the cache key follows the real source.
    An extracted folder wins over a tarball beside it: it is the same data, and quicker to read."""
    if not p.exists():
        raise UserError(f"data path {p} does not exist: pass --data PATH to {_LAYOUTS}")
    if p.is_file():
        if p.name.endswith(_TARBALL):
            return p
        raise UserError(f"{p} is not a .tar.gz/.tgz/.tar: pass --data PATH to {_LAYOUTS}")

    def holds_data(d: Path) -> bool:
        return ((d / "train").is_dir() and (d / "test").is_dir()) or (d / "data_batch_1").is_file()
    if holds_data(p):
        return p
    dirs = [c for c in sorted(p.iterdir()) if c.is_dir() and holds_data(c)]
    found = dirs or [c for c in sorted(p.iterdir()) if c.is_file() and c.name.endswith(_TARBALL)]
    if len(found) > 1:
        raise UserError(f"{p} holds several datasets ({', '.join(c.name for c in found)}): pass --data to one")
    if not found:
        raise UserError(f"no image data found in {p}: expected {_LAYOUTS}")
    return found[0]


def _wanted(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base in _BATCHES or (base.lower().endswith(_IMAGE) and not base.startswith("."))


def _dir_entries(root: Path) -> list[tuple[str, bytes | None]]:
    """(relative path, bytes) per wanted file and (path, None) per folder, like ``_tar_entries``."""
    try:
        return [(f.relative_to(root).as_posix(), None if f.is_dir() else f.read_bytes())
                for f in sorted(root.rglob("*")) if f.is_dir() or _wanted(f.name)]
    except OSError as e:
        raise UserError(f"cannot read {e.filename}: {e.strerror}; fix its permissions or remove it") from e


def _tar_entries(src: Path) -> list[tuple[str, bytes | None]]:
    """One streaming pass over the tarball, nothing written to disk."""
    try:
        with tarfile.open(src) as tf:
            return [(m.name, None if m.isdir() else tf.extractfile(m).read())
                    for m in tf if m.isdir() or (m.isfile() and _wanted(m.name))]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read tarball {src} ({type(e).__name__}): re-download or re-create it") from e


def _parse(entries: list, src: Path, size: int | None = None) -> Cifar10:
    images: dict[tuple[str, str], list] = {}
    batches = {}
    for rel, payload in entries:
        parts = [s for s in rel.split("/") if s not in ("", ".")]
        if payload is None:  # a directory: remember class folders so that empty ones are reported
            if len(parts) >= 2 and parts[-2] in ("train", "test"):
                images.setdefault((parts[-2], parts[-1]), [])
        elif parts[-1] in _BATCHES:
            batches[parts[-1]] = (rel, payload)
        elif len(parts) >= 3 and parts[-3] in ("train", "test"):
            images.setdefault((parts[-3], parts[-2]), []).append((parts[-1], rel, payload))
    if batches:
        return _parse_batches(batches, src)
    if not any(images.values()):
        raise UserError(f"no images found in {src}: expected {_LAYOUTS}")
    # Official order for the official names, so labels mean the same as everywhere else.
    classes = sorted({c for _, c in images}, key=lambda c: (CLASSES.index(c) if c in CLASSES else 99, c))
    out = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, c in enumerate(classes):
            files = sorted(images.get((split, c), []))
            if not files:
                problem = "has no .jpg/.png images" if (split, c) in images else "is missing"
                raise UserError(f"{src}: class folder {split}/{c} {problem}; give train/ and test/ the same classes")
            xs += [_decode(blob, f"{src}/{rel}", size) for _, rel, blob in files]
            ys += [label] * len(files)
        shapes = sorted({a.shape[:2] for a in xs})
        if len(shapes) > 1 or shapes[0][0] != shapes[0][1]:
            raise UserError(f"{src}: images are not all of one square size ({', '.join(f'{w}x{h}' for h, w in shapes[:3])}"
                            f"{', ...' if len(shapes) > 3 else ''}); resize them with --task-option size=N")
        out[split] = (torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(), torch.tensor(ys))
    if out["train"][0].shape[2:] != out["test"][0].shape[2:]:
        raise UserError(f"{src}: train and test images differ in size; resize them with --task-option size=N")
    return Cifar10(*out["train"], *out["test"], tuple(classes))


def _decode(blob: bytes, name: str, size: int | None = None) -> np.ndarray:
    # Serial on purpose: a process pool saved only ~0.8 s of ~4.5 s on 2 cores, for a one-time decode.
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot decode image {name}: corrupt or not an image; replace or delete it") from e


def _numpy_global(modules: tuple[str, ...], name: str):
    """``name`` from the first of ``modules`` that has it (numpy 2 renamed ``numpy.core`` to ``numpy._core``)."""
    import importlib

    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch and nothing else.

    A pickle names the callables it wants run; a plain ``pickle.loads`` imports and calls any of them, so a
    doctored ``data_batch_1`` could run code. A batch is a dict of bytes, lists and numpy arrays, so only
    numpy's array and dtype reconstructors are allowed: ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``
    and ``numpy.dtype`` (what the official protocol-2 files name), under their numpy 1 and numpy 2 module names,
    and ``_frombuffer`` (what numpy writes for protocol 5). Anything else is refused before it is imported."""

    _ALLOWED = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        **{(module, "_reconstruct"): lambda: _numpy_global(("numpy._core.multiarray", "numpy.core.multiarray"),
                                                           "_reconstruct")
           for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(module, "_frombuffer"): lambda: _numpy_global(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")
           for module in ("numpy.core.numeric", "numpy._core.numeric")},
    }

    def __init__(self, payload: bytes, where: str):
        super().__init__(io.BytesIO(payload), encoding="bytes")  # bytes: the official files come from Python 2
        self.where = where

    def find_class(self, module, name):
        make = self._ALLOWED.get((module, name))
        found = make() if make else None
        if found is None:
            raise UserError(f"refusing to load {self.where}: it asks to run {module}.{name}, which a CIFAR-10 batch "
                            "never needs (a pickle can run code); use the official cifar-10-batches-py")
        return found


def _parse_batches(batches: dict, src: Path) -> Cifar10:
    """The official python format. These are pickles, read by ``_BatchUnpickler``, which builds numpy arrays
    and refuses everything else."""
    missing = [b for b in _BATCHES if b not in batches]
    if missing:
        raise UserError(f"{src} lacks {', '.join(missing)}: use the complete official cifar-10-batches-py")
    xs, ys = [], []
    for b in _BATCHES:
        rel, payload = batches[b]
        try:  # a damaged pickle can raise almost anything, hence the broad except
            d = _BatchUnpickler(payload, f"{src}/{rel}").load()
            x, y = np.asarray(d[b"data"]), np.asarray(d[b"labels"], dtype=np.int64)
            if x.dtype != np.uint8 or x.shape != (len(y), 3072) or y.min(initial=0) < 0 or y.max(initial=0) > 9:
                raise ValueError("not the CIFAR-10 layout")
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"cannot read CIFAR-10 batch {src}/{rel}: corrupt or not the official format; "
                            "re-download it") from e
        xs.append(torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()))
        ys.append(torch.from_numpy(y))
    return Cifar10(torch.cat(xs[:5]), torch.cat(ys[:5]), xs[5], ys[5], CLASSES)


def _cache_key(src: Path) -> str:
    """Path, sizes and mtimes of the source and of its folders two levels down (class folders change
    mtime when images are added or removed); files rewritten in place inside a class folder are missed."""
    src = src.resolve()
    paths = [src]
    if src.is_dir():
        top = sorted(src.iterdir())
        paths += top + sorted(c for d in top if d.is_dir() for c in d.iterdir() if c.is_dir())
    h = hashlib.sha256(b"v1")
    for p in paths:
        st = p.stat()
        h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _load_cache(f: Path) -> Cifar10 | None:
    try:
        d = torch.load(f, weights_only=True)
        data = Cifar10(d["train_x"], d["train_y"], d["test_x"], d["test_y"], tuple(d["classes"]))
        if data.train_x.dtype == data.test_x.dtype == torch.uint8 and len(data.train_x) == len(data.train_y):
            return data
    except Exception:  # truncated or foreign file: rebuild it
        pass
    return None


def _save_cache(data: Cifar10, f: Path) -> None:
    tmp = None
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=f.parent, prefix=f.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            torch.save({**{k: getattr(data, k) for k in ("train_x", "train_y", "test_x", "test_y")},
                        "classes": list(data.classes)}, fh)
        os.replace(tmp, f)
    except OSError as e:  # the cache only saves time; a read-only home must not stop a run
        warnings.warn(f"could not write the CIFAR-10 cache {f}: {e}")
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _download(cache: Path) -> Path:
    dest = cache / "cifar-10-python.tar.gz"
    if dest.is_file():
        return dest
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=dest.name, suffix=".part")
    except OSError as e:
        raise UserError(f"cannot write to cache folder {cache} ({e.strerror}): set ONESHOT_CACHE elsewhere") from e
    md5 = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(_URL, timeout=15) as r:
            while chunk := r.read(1 << 20):
                md5.update(chunk)
                fh.write(chunk)
        if md5.hexdigest() != _MD5:
            raise UserError("the CIFAR-10 download had the wrong MD5 checksum (deleted): retry, or pass --data PATH")
        os.replace(tmp, dest)
    except OSError as e:  # URLError, timeouts and socket errors are all OSErrors
        raise UserError(_NO_NET) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def split_train(data: Cifar10, n_weight: int, n_arch: int):
    """Weights get the first ``n_weight`` and the architecture the last ``n_arch`` images, as in AdvantageNAS,
    but of a fixed shuffle (``torch.Generator().manual_seed(0)``): the training set is sorted by class,
    so an unshuffled split would hand each side only half of the classes."""
    n = len(data.train_x)
    if n_weight < 0 or n_arch < 0 or n_weight + n_arch > n:
        raise UserError(f"n_weight + n_arch = {n_weight} + {n_arch} must be between 0 and {n}: lower them")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    w, a = perm[:n_weight], perm[n - n_arch:]
    return (data.train_x[w], data.train_y[w]), (data.train_x[a], data.train_y[a])


def _normaliser(device: torch.device):
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return lambda x: (x.float() - mean) / std


class Batches:
    """An endless, reproducible stream of (augmented) training batches that never leaves the device.

    Each epoch's plan (permutation, crop offsets, flips) is drawn at its start from seeded CPU generators,
    so the stream is the same on any device, and moved to the device in one copy, so that a step does
    no host-to-device transfer (which would synchronise CUDA).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, device, augment: bool, seed: int,
                 drop_last: bool = True, cutout: int = 0):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3 or len(y) != len(x):
            raise UserError(f"Batches wants uint8 Nx3xHxW images and N labels, got {x.dtype} {tuple(x.shape)}")
        if batch_size < 1 or (drop_last and batch_size > len(x)):
            raise UserError(f"batch size {batch_size} does not fit {len(x)} images: lower the batch size")
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.batch_size, self.augment, self.drop_last, self.cutout = batch_size, augment, drop_last, cutout
        self._norm = _normaliser(self.device)
        self._order = torch.Generator().manual_seed(seed)
        self._aug = torch.Generator().manual_seed(seed ^ 0x5DEECE66D)  # order independent of augment
        self._epoch, self._pos, self._plan = 0, 0, None
        h, w = x.shape[2:]
        self._rows, self._cols = torch.arange(h, device=self.device), torch.arange(w, device=self.device)

    @property
    def steps_per_epoch(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def epoch(self) -> int:
        """Completed passes, which is also the index of the epoch the next batch comes from."""
        return self._epoch

    def __iter__(self):
        return self

    def __next__(self):
        n = len(self.x)
        if self._plan is None:
            off = torch.randint(0, 2 * PAD + 1, (2, n), generator=self._aug)
            flip = torch.randint(0, 2, (1, n), generator=self._aug)
            rows = [torch.randperm(n, generator=self._order)[None], off, flip]
            if self.cutout:  # centres of the cut-out squares, anywhere in the image (squares may be clipped)
                rows.append(torch.randint(0, self.x.shape[2], (2, n), generator=self._aug))
            self._plan = torch.cat(rows).to(self.device)
        p = self._plan[:, self._pos:self._pos + self.batch_size]
        self._pos += p.shape[1]
        if self._pos + (self.batch_size if self.drop_last else 1) > n:
            self._epoch, self._pos, self._plan = self._epoch + 1, 0, None
        x = self.x[p[0]]
        if self.augment:
            x = self._crop_flip(x, p[1], p[2], p[3].bool())
        x = self._norm(x)
        if self.cutout:
            x = self._cut(x, p[4], p[5])
        return x, self.y[p[0]]

    next = __next__

    def _crop_flip(self, x, dy, dx, flip):
        """Zero-pad by PAD, then one gather reads each image's window; a flip just reverses its columns."""
        b, c, h, w = x.shape
        xp = F.pad(x, (PAD,) * 4)
        rows = dy[:, None] + self._rows
        cols = torch.where(flip[:, None], self._cols.flip(0), self._cols) + dx[:, None]
        idx = (rows[:, :, None] * (w + 2 * PAD) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return torch.gather(xp.flatten(2), 2, idx).view(b, c, h, w)

    def _cut(self, x, cy, cx):
        """Cutout (DeVries & Taylor 2017): zero a cutout x cutout square per image, after normalisation."""
        half = self.cutout // 2
        rows = (self._rows[None, :] >= cy[:, None] - half) & (self._rows[None, :] < cy[:, None] - half + self.cutout)
        cols = (self._cols[None, :] >= cx[:, None] - half) & (self._cols[None, :] < cx[:, None] - half + self.cutout)
        square = rows[:, :, None] & cols[:, None, :]
        return x.masked_fill(square[:, None], 0.0)

    def state_dict(self) -> dict:
        plan = torch.empty(0, dtype=torch.int64) if self._plan is None else self._plan.cpu()
        return {"epoch": self._epoch, "pos": self._pos, "plan": plan, "order_rng": self._order.get_state(),
                "aug_rng": self._aug.get_state(), "n": len(self.x), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != len(self.x) or state["batch_size"] != self.batch_size:
            raise UserError(f"the saved data stream is for {state['n']} images in batches of {state['batch_size']}: "
                            "resume with the same data split and batch size")
        self._epoch, self._pos = int(state["epoch"]), int(state["pos"])
        self._plan = state["plan"].to(self.device) if state["plan"].numel() else None
        self._order.set_state(state["order_rng"])
        self._aug.set_state(state["aug_rng"])


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, device):
    """The whole set in order, unaugmented, moved to the device in one copy."""
    if batch_size < 1:  # checked now, not at the first next()
        raise UserError(f"batch size {batch_size} must be at least 1")
    device = torch.device(device)
    norm, x, y = _normaliser(device), x.to(device), y.to(device)
    return ((norm(x[i:i + batch_size]), y[i:i + batch_size]) for i in range(0, len(x), batch_size))
