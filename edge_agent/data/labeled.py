"""A labelled set of model-ready inputs: what every loader returns.

Two kinds with one interface (``len``, ``labels``, ``classes``, ``targets``,
``subset``, ``take``, ``batches``, ``digest``): :class:`LabeledSet` holds its
inputs in memory; :class:`CachedSet` reads rows from a file on disk (uint8
pixels or float32 features) a batch at a time, so training memory does not grow
with the number of files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """Data that cannot be read or does not fit the model."""


class _Labelled:
    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[str]:
        """Distinct class names, sorted."""
        return sorted(set(self.labels))

    def targets(self, label_list: list[str]) -> torch.Tensor:
        """Indices of each sample's label in ``label_list`` (the model's global label space)."""
        index = {name: i for i, name in enumerate(label_list)}
        unknown = sorted(set(self.labels) - index.keys())
        if unknown:
            raise DataError(
                f"labels not in the model's label list: {', '.join(unknown)} "
                f"(the model knows: {', '.join(label_list)})"
            )
        return torch.tensor([index[name] for name in self.labels], dtype=torch.long)


@dataclass
class LabeledSet(_Labelled):
    """``x``: float32 ``[N, *input_shape]``; ``labels``: the class name of each sample."""

    x: torch.Tensor
    labels: list[str]
    report: DataReport | None = field(default=None, repr=False, compare=False)  # what the loader found

    def __post_init__(self):
        if len(self.labels) != self.x.shape[0]:
            raise DataError(f"{self.x.shape[0]} inputs but {len(self.labels)} labels")

    def subset(self, idx: torch.Tensor | list[int]) -> LabeledSet:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return LabeledSet(self.x[idx], [self.labels[i] for i in idx.tolist()])

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The model-ready inputs at ``idx``."""
        return self.x[idx]

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The inputs in order, ``batch_size`` at a time."""
        yield from self.x.split(batch_size)

    def digest(self, h) -> None:
        """Feed the inputs' bytes to the hash ``h`` (a checkpoint's fingerprint)."""
        h.update(np.ascontiguousarray(self.x.numpy()).data)


class RowFile:
    """Fixed-size rows of one dtype in a flat file, read with ``pread``.

    Reads go through the page cache, not this process's memory: a training run
    that visits every row still holds only the rows of its current batch.
    """

    def __init__(self, path: str | os.PathLike, dtype: str, row_shape: tuple[int, ...], count: int):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.count = int(count)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        size = self.path.stat().st_size
        if size != self.row_bytes * self.count:
            raise DataError(f"cache file {self.path} has {size} bytes, expected {self.row_bytes * self.count}")
        self._fd = os.open(self.path, os.O_RDONLY)

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order) as ``[len(rows), *row_shape]``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        i = 0
        while i < len(rows):
            j = i + 1  # one read for each run of consecutive rows
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            want = self.row_bytes * (j - i)
            got = os.preadv(self._fd, [flat[i:j]], int(rows[i]) * self.row_bytes)
            if got != want:
                raise DataError(f"cache file {self.path} is shorter than its index says")
            i = j
        return out


@dataclass
class CachedSet(_Labelled):
    """Labelled rows of a :class:`RowFile`; ``transform`` turns stored rows into model-ready float32.

    ``key`` names what the rows are (source files and conversion); it, not the
    rows' bytes, is what :meth:`digest` hashes, so fingerprinting reads nothing.
    """

    store: RowFile
    rows: np.ndarray
    labels: list[str]
    transform: Callable[[np.ndarray], np.ndarray]
    key: str = ""
    report: DataReport | None = field(default=None, repr=False, compare=False)  # what the loader found

    def __post_init__(self):
        self.rows = np.asarray(self.rows, dtype=np.int64)
        if len(self.labels) != len(self.rows):
            raise DataError(f"{len(self.rows)} inputs but {len(self.labels)} labels")

    def subset(self, idx: torch.Tensor | list[int]) -> CachedSet:
        idx = torch.as_tensor(idx, dtype=torch.long).numpy()
        return CachedSet(self.store, self.rows[idx], [self.labels[i] for i in idx.tolist()], self.transform, self.key)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The model-ready inputs at ``idx``, read from disk now."""
        rows = self.rows[torch.as_tensor(idx, dtype=torch.long).numpy()]
        return torch.from_numpy(np.ascontiguousarray(self.transform(self.store.read(rows)), dtype=np.float32))

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.rows), batch_size):
            yield self.take(torch.arange(i, min(i + batch_size, len(self.rows))))

    def digest(self, h) -> None:
        h.update(self.key.encode())
        h.update(self.rows.tobytes())

    @property
    def x(self) -> torch.Tensor:
        """Every input in memory at once (for small sets and evaluation; training reads batches)."""
        return torch.cat(list(self.batches(256))) if len(self.rows) else torch.empty(0)


@dataclass
class DataReport:
    """What a loader found and did: shown before training so nothing happens to the data unseen."""

    root: str
    kind: str  # "image" | "audio"
    target: str  # what every input becomes, e.g. "1x16x16 image" or "16000 Hz mono, 1.0 s clips"
    per_class: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)  # e.g. {"RGB 64x64": 500}: what the files were
    adjusted: dict[str, int] = field(default_factory=dict)  # e.g. {"padded to 1.0 s": 3}
    empty: list[str] = field(default_factory=list)  # class folders with no readable file of the kind
    nested: list[str] = field(default_factory=list)  # folders inside class folders: not read
    ignored: dict[str, int] = field(default_factory=dict)  # other files by suffix: not read
    loose: int = 0  # files directly in the root, outside any class folder: not read
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) left out with skip_bad

    def lines(self) -> list[str]:
        """The summary, one screen at most."""
        n = sum(self.per_class.values())
        out = [f"data {self.root}: {n} {'clips' if self.kind == 'audio' else 'images'} in {len(self.per_class)} classes"]
        out.append("  " + ", ".join(f"{c} {k}" for c, k in sorted(self.per_class.items())))
        out.append(f"  every input becomes: {self.target}")
        for src, k in sorted(self.sources.items(), key=lambda kv: -kv[1])[:6]:
            out.append(f"    {k} from {src}")
        if len(self.sources) > 6:
            out.append(f"    ... and {len(self.sources) - 6} other source formats")
        for what, k in sorted(self.adjusted.items()):
            out.append(f"    {k} {what}")
        if self.empty:
            out.append(f"  empty class folders (no class made): {', '.join(self.empty)}")
        if self.nested:
            shown = ", ".join(self.nested[:5]) + (f" and {len(self.nested) - 5} more" if len(self.nested) > 5 else "")
            out.append(f"  folders inside class folders are not read: {shown}")
        if self.loose:
            out.append(f"  {self.loose} files in {self.root} itself are outside any class folder: not read")
        if self.ignored:
            out.append("  not read (other file types): " + ", ".join(f"{k} {s}" for s, k in sorted(self.ignored.items())))
        if self.skipped:
            out.append(f"  skipped {len(self.skipped)} unreadable files:")
            out += [f"    {f}: {why}" for f, why in self.skipped[:8]]
            if len(self.skipped) > 8:
                out.append(f"    ... and {len(self.skipped) - 8} more")
        if len(self.per_class) == 1:
            out.append(
                "  one class only: the loss and the accuracy see only this class's logit, so the local validation "
                "accuracy is 1.0 by construction and measures nothing"
            )
        return out

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> DataReport:
        d = json.loads(text)
        d["skipped"] = [tuple(s) for s in d.get("skipped", [])]
        return cls(**d)


def read_lines(path: str | os.PathLike, what: str = "labels") -> list[str]:
    """The non-comment lines of a UTF-8 text file (a byte-order mark is allowed), stripped.

    Blank lines and repeated lines are refused with their line number; lines
    starting with ``#`` are comments.  ``what`` names the content in messages.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no {what} file at {p}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 text (byte {e.start})") from None
    seen: dict[str, int] = {}
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("#"):
            continue
        if not s:
            raise DataError(f"{p} line {no} is blank: one entry per line, no empty lines")
        if s in seen:
            raise DataError(f"{p} line {no} repeats {s!r} (first on line {seen[s]})")
        seen[s] = no
        out.append(s)
    return out


def source_key(*parts: object, files: list[Path] = ()) -> str:
    """A hex key for the cache of ``files`` converted as ``parts`` say: names, sizes and mtimes, not contents."""
    import hashlib

    h = hashlib.sha256(json.dumps([str(p) for p in parts]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def cached_rows(
    cache_dir: str | os.PathLike,
    key: str,
    dtype: str,
    row_shape: tuple[int, ...],
    build: Callable[[Callable[[np.ndarray], None]], tuple[list[str], DataReport]],
) -> tuple[RowFile, list[str], DataReport]:
    """The rows cached under ``key`` in ``cache_dir``, written once by ``build(write)`` if absent.

    ``build`` calls ``write(row)`` for each kept input, in order, and returns the
    labels of those rows and the report; both are stored beside the rows so a
    resumed run reads no source file again.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    rows_path, meta_path = cache / f"{key}.rows", cache / f"{key}.json"
    if rows_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            store = RowFile(rows_path, dtype, row_shape, len(meta["labels"]))
            return store, meta["labels"], DataReport.from_json(meta["report"])
        except (DataError, ValueError, KeyError, TypeError):
            pass  # a cache cut short: write it again
    tmp = rows_path.with_name(rows_path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            want = np.dtype(dtype)

            def write(row: np.ndarray) -> None:
                f.write(np.ascontiguousarray(row, dtype=want).tobytes())

            labels, report = build(write)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a bad file or Ctrl-C: leave no half-written cache behind
        raise
    os.replace(tmp, rows_path)
    meta_tmp = meta_path.with_name(meta_path.name + ".tmp")
    meta_tmp.write_text(json.dumps({"labels": labels, "report": report.to_json()}), encoding="utf-8")
    os.replace(meta_tmp, meta_path)
    return RowFile(rows_path, dtype, row_shape, len(labels)), labels, report
