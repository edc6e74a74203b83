"""Latency of exported models on this device: ONNX Runtime, LiteRT, and torch eager as the baseline.

What is timed (the "timed call"), per runtime, with the input prepared beforehand:

- ``onnx``: one ``InferenceSession.run`` on a float32 NCHW batch (a QDQ int8
  model takes float input; its quantize op is part of the graph, so it is timed);
- ``tflite``: ``set_tensor`` + ``invoke`` + ``get_tensor`` per sample (the
  graphs are batch 1, so a batch of B is B invocations, as the device runtime
  does); an int8 model's input is quantized once, outside the timing, like
  ``benchmark_model`` does;
- ``torch``: ``model(x)`` under ``torch.inference_mode()``.

Each measurement runs in its own Python process by default (``isolate=True``):
the peak RSS is then that of a process holding one runtime and one model, and
runtimes cannot disturb each other's thread pools. ``rounds > 1`` repeats every
target in turn (rotating the order) and pools the samples, so a burst of load
from another process spreads over all targets instead of hitting one.

This module needs numpy and the runtime being measured; torch is imported only
for the ``torch`` row. Expected failures raise :class:`BenchError` (one line).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ("torch", "onnx", "tflite")
# Flags that decide which kernels the runtimes pick (fp32 FMA/AVX-512, int8 VNNI, bf16).
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "neon", "asimd", "asimddp", "i8mm")
PERCENTILES = (50, 90, 95, 99)


class BenchError(ValueError):
    """A benchmark that cannot run (missing file, bad option, runtime failure); one-line message."""


@dataclass(frozen=True)
class BenchConfig:
    """How to time: ``runs`` timed calls after ``warmup`` untimed ones, ``threads`` intra-op threads, ``batch`` samples per call."""

    threads: int = 1
    runs: int = 200
    warmup: int = 50
    batch: int = 1
    rounds: int = 1
    isolate: bool = True

    def __post_init__(self) -> None:
        for name in ("threads", "runs", "batch", "rounds"):
            if int(getattr(self, name)) < 1:
                raise BenchError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise BenchError(f"--warmup must be >= 0, got {self.warmup}")


@dataclass(frozen=True)
class Target:
    """One thing to time: a model file on a runtime.

    ``path`` is an ``.onnx`` / ``.tflite`` file, or a bundle ``.safetensors`` for
    ``torch``. ``shape`` is the sample shape NCHW without batch; ``layout`` is what
    the file's input wants. ``options`` are runtime settings:
    onnx ``graph_optimization_level`` (``disable|basic|extended|all``),
    ``allow_spinning`` (bool); tflite ``xnnpack`` (bool, default True).
    ``label`` names the variant in reports (defaults to ``runtime precision``).
    """

    runtime: str
    path: str
    precision: str
    shape: tuple[int, ...]
    layout: str = "NCHW"
    label: str = ""
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label or f"{self.runtime} {self.precision}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Target:
        return cls(d["runtime"], d["path"], d["precision"], tuple(d["shape"]), d.get("layout", "NCHW"), d.get("label", ""), dict(d.get("options") or {}))


@dataclass
class Measurement:
    """Raw result of one process timing one target: per-call times in ns, init and first call in ms."""

    samples_ns: list[int]
    init_ms: float
    first_ms: float
    peak_rss_mb: float
    runtime_version: str
    info: dict = field(default_factory=dict)


@dataclass
class BenchRow:
    """One line of the report: one runtime and precision at one batch size and thread count. Times in ms."""

    label: str
    runtime: str
    runtime_version: str
    precision: str
    file: str
    size_bytes: int
    batch: int
    threads: int
    runs: int
    rounds: int
    warmup: int
    init_ms: float
    first_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    throughput_per_s: float
    peak_rss_mb: float
    rss_isolated: bool
    timed: str
    options: dict
    cpu_model: str
    cpu_flags: list[str]
    load_avg_1m: float
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------
# The machine.


def cpu_info() -> dict:
    """CPU model name, SIMD flags that matter to the runtimes, logical cores, and the 1/5/15-min load averages."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = m.group(1).strip() if m else model
        f = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
        flags = set(f.group(1).split()) if f else set()
    except OSError:
        pass  # not Linux: the model name from platform is the best we have
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu_model": model,
        "cpu_flags": [x for x in SIMD_FLAGS if x in flags],
        "logical_cpus": os.cpu_count() or 1,
        "machine": platform.machine(),
        "load_avg": [round(v, 2) for v in load],
    }


def machine_slug(model: str | None = None) -> str:
    """A short file-name-safe name of this CPU, e.g. ``amd-epyc`` or ``intel-xeon-platinum-8375c``."""
    model = model or cpu_info()["cpu_model"]
    words = re.sub(r"\((?:R|TM|tm|r)\)|CPU|Processor|@.*$|\d+-Core", " ", model)
    slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")
    return slug[:40].rstrip("-") or "unknown-cpu"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, because ``ru_maxrss`` survives
    fork+exec and would report the parent's peak (a torch-loaded CLI) for a worker.
    """
    try:
        m = re.search(r"^VmHWM:\s*(\d+)\s*kB", Path("/proc/self/status").read_text(), re.M)
        if m:
            return int(m.group(1)) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# ---------------------------------------------------------------------------
# Loading and the timed call, per runtime.


def _example(shape: Sequence[int], batch: int, seed: int = 0) -> np.ndarray:
    # Normal noise in the normalized input space: what the models see after preprocessing.
    return np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _load_onnx(t: Target, cfg: BenchConfig) -> tuple[Callable[[], Any], str, dict]:
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = t.options.get("graph_optimization_level", "all")
    if level not in levels:
        raise BenchError(f"graph_optimization_level must be one of {', '.join(levels)}, not {level!r}")
    opts.graph_optimization_level = levels[level]
    if "allow_spinning" in t.options:
        # Spinning workers trade CPU for wake-up latency; on a shared 2-core box that can backfire.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if t.options["allow_spinning"] else "0")
    if t.options.get("profile"):
        opts.enable_profiling = True
        opts.profile_file_prefix = str(t.options["profile"])
    sess = ort.InferenceSession(t.path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = _example(t.shape, cfg.batch)
    if t.layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    feed = {name: x}
    info = {"graph_optimization_level": level}

    def call() -> Any:
        return sess.run(None, feed)

    call.session = sess  # type: ignore[attr-defined] -- lets the profiler end the session's trace
    return call, ort.__version__, info


def _load_tflite(t: Target, cfg: BenchConfig) -> tuple[Callable[[], Any], str, dict]:
    try:
        from ai_edge_litert import interpreter as tfl

        version = _pkg_version("ai-edge-litert")
    except ImportError:
        from tflite_runtime import interpreter as tfl  # type: ignore[no-redef]

        version = "tflite-runtime " + _pkg_version("tflite-runtime")
    kwargs: dict = {"model_path": t.path, "num_threads": cfg.threads}
    if not t.options.get("xnnpack", True):
        kwargs["experimental_op_resolver_type"] = tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = tfl.Interpreter(**kwargs)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    if int(inp["shape"][0]) != 1:
        raise BenchError(f"{Path(t.path).name}: expected a batch-1 TFLite graph, input is {list(inp['shape'])}")
    x = _example(t.shape, cfg.batch)
    if t.layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    from edge_agent.runtime import _quantize

    samples = [_quantize(s[None], inp) for s in x]
    set_tensor, invoke, get_tensor = it.set_tensor, it.invoke, it.get_tensor
    i_in, i_out = inp["index"], out["index"]
    info = {"input_dtype": np.dtype(inp["dtype"]).name, "xnnpack": bool(t.options.get("xnnpack", True)), "batch_mode": "loop of batch-1 invokes"}

    def call() -> Any:
        for s in samples:
            set_tensor(i_in, s)
            invoke()
            y = get_tensor(i_out)
        return y

    return call, version, info


def _load_torch(t: Target, cfg: BenchConfig) -> tuple[Callable[[], Any], str, dict]:
    import torch

    from edge_agent.bundle import load_bundle

    torch.set_num_threads(cfg.threads)
    model = load_bundle(t.path).model.eval()
    x = torch.from_numpy(_example(t.shape, cfg.batch))

    def call() -> Any:
        with torch.inference_mode():
            return model(x)

    return call, torch.__version__, {"intra_op_threads": torch.get_num_threads()}


def _pkg_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


LOADERS = {"onnx": _load_onnx, "tflite": _load_tflite, "torch": _load_torch}
TIMED = {
    "onnx": "InferenceSession.run (float32 input ready)",
    "tflite": "set_tensor+invoke+get_tensor per sample (input already in the model's dtype)",
    "torch": "model(x) under inference_mode",
}


def measure(target: Target, cfg: BenchConfig) -> Measurement:
    """Time ``target`` in this process: load (init_ms), one first call (first_ms), ``cfg.warmup`` untimed calls, ``cfg.runs`` timed calls."""
    if target.runtime not in LOADERS:
        raise BenchError(f"unknown runtime {target.runtime!r} (known: {', '.join(RUNTIMES)})")
    if not Path(target.path).is_file():
        raise BenchError(f"no model file at {target.path}")
    t0 = time.perf_counter_ns()
    try:
        call, version, info = LOADERS[target.runtime](target, cfg)
    except BenchError:
        raise
    except Exception as e:  # noqa: BLE001 -- each runtime raises its own types; the user needs one line
        raise BenchError(f"{target.runtime} cannot load {Path(target.path).name}: {_first_line(e)}") from None
    t1 = time.perf_counter_ns()
    try:
        call()
        t2 = time.perf_counter_ns()
        for _ in range(cfg.warmup):
            call()
        samples = [0] * cfg.runs
        clock = time.perf_counter_ns
        for i in range(cfg.runs):
            s = clock()
            call()
            samples[i] = clock() - s
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"{target.runtime} failed running {Path(target.path).name}: {_first_line(e)}") from None
    if target.options.get("profile") and target.runtime == "onnx":
        info["profile_file"] = call.session.end_profiling()  # type: ignore[attr-defined]
    return Measurement(samples, (t1 - t0) / 1e6, (t2 - t1) / 1e6, peak_rss_mb(), version, info)


def _thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # Keep BLAS/OpenMP pools (numpy, torch) at the row's thread count in the worker.
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    return env


def measure_isolated(target: Target, cfg: BenchConfig, timeout_s: float = 600.0) -> Measurement:
    """:func:`measure` in a fresh Python process (``python -m edge_agent.bench``): clean peak RSS, no shared thread pools."""
    job = json.dumps({"target": target.to_dict(), "config": asdict(cfg)})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edge_agent.bench", job],
            capture_output=True, text=True, timeout=timeout_s, env=_thread_env(cfg.threads),
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{target.name}: the benchmark process took longer than {timeout_s:.0f} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    try:
        out = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        out = {}
    if "error" in out:
        raise BenchError(out["error"])
    if proc.returncode != 0 or "samples_ns" not in out:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{target.name}: the benchmark process failed (exit {proc.returncode}): {tail}")
    return Measurement(**out)


def summarize(samples_ns: Sequence[int], batch: int) -> dict[str, float]:
    """Mean, std, min, p50/p90/p95/p99, max in ms and throughput in samples/s of per-call times in ns."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        raise BenchError("no timed runs")
    q = np.percentile(a, PERCENTILES)
    mean = float(a.mean())
    out = {"mean_ms": mean, "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0, "min_ms": float(a.min())}
    out.update({f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, q, strict=True)})
    out["max_ms"] = float(a.max())
    out["throughput_per_s"] = batch / (mean / 1e3) if mean > 0 else math.inf
    return out


def bench(targets: Sequence[Target], cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Time every target, ``cfg.rounds`` times in rotating order, pooling samples; one :class:`BenchRow` per target.

    ``init_ms`` and ``first_ms`` are the median over rounds (each round is a
    fresh load when isolated); ``peak_rss_mb`` is the maximum over rounds.
    """
    if not targets:
        raise BenchError("nothing to benchmark")
    pooled: list[list[Measurement]] = [[] for _ in targets]
    run = measure_isolated if cfg.isolate else measure
    order = list(range(len(targets)))
    for r in range(cfg.rounds):
        # Rotate so no target always runs first (cold caches) or last (after others heat the CPU).
        for i in order[r % len(order):] + order[: r % len(order)]:
            if progress:
                progress(f"round {r + 1}/{cfg.rounds}: {targets[i].name}")
            pooled[i].append(run(targets[i], cfg))
    machine = cpu_info()
    rows = []
    for t, ms in zip(targets, pooled, strict=True):
        samples = [s for m in ms for s in m.samples_ns]
        stats = summarize(samples, cfg.batch)
        rows.append(
            BenchRow(
                label=t.name, runtime=t.runtime, runtime_version=ms[0].runtime_version, precision=t.precision,
                file=Path(t.path).name, size_bytes=Path(t.path).stat().st_size, batch=cfg.batch, threads=cfg.threads,
                runs=len(samples), rounds=cfg.rounds, warmup=cfg.warmup,
                init_ms=float(np.median([m.init_ms for m in ms])), first_ms=float(np.median([m.first_ms for m in ms])),
                **stats, peak_rss_mb=max(m.peak_rss_mb for m in ms), rss_isolated=cfg.isolate, timed=TIMED[t.runtime],
                options=dict(t.options), cpu_model=machine["cpu_model"], cpu_flags=machine["cpu_flags"],
                load_avg_1m=machine["load_avg"][0], info=ms[0].info,
            )
        )
    return rows


# ---------------------------------------------------------------------------
# What to time, from a kit or a bundle.


def kit_targets(kit_path: str | Path, runtime: str = "all", verify: bool = True) -> list[Target]:
    """One target per artifact of the kit at ``kit_path`` whose format matches ``runtime`` (``onnx``, ``tflite``, ``all``).

    The kit is loaded with :func:`edge_agent.runtime.load_kit` (sha256 checked),
    so a corrupt kit fails here with the runtime's one-line message.
    """
    from edge_agent.runtime import load_kit

    if runtime not in ("onnx", "tflite", "all"):
        raise BenchError(f"a kit holds onnx and tflite artifacts; --runtime {runtime} needs a bundle (.safetensors)")
    kit = load_kit(kit_path, verify=verify)
    targets = [
        Target(a.format, str(kit.path / a.file), a.precision, kit.input_spec.shape, a.layout)
        for a in kit.artifacts
        if runtime == "all" or a.format == runtime
    ]
    if not targets:
        have = ", ".join(sorted({a.format for a in kit.artifacts}))
        raise BenchError(f"kit {kit.path} has no {runtime} artifact (has: {have})")
    return targets


def bundle_target(bundle_path: str | Path) -> Target:
    """The torch eager fp32 target of a bundle (``.safetensors``), after validating its manifest."""
    from edge_agent.bundle import read_manifest

    p = Path(bundle_path)
    if not p.is_file():
        raise BenchError(f"no bundle at {p}")
    # Bundles are a few MB: reading them whole lets read_manifest check the header against the data size.
    spec = read_manifest(p.read_bytes()).input_spec
    return Target("torch", str(p), "fp32", spec.shape, "NCHW")


def targets_for(path: str | Path, runtime: str = "all") -> list[Target]:
    """Targets for a kit folder (its artifacts) or a bundle file (torch eager)."""
    p = Path(path)
    if p.is_dir():
        return kit_targets(p, runtime)
    if p.suffix == ".safetensors":
        if runtime not in ("torch", "all"):
            raise BenchError(f"{p} is a bundle: it runs on torch only (export it to a kit for {runtime})")
        return [bundle_target(p)]
    if not p.exists():
        raise BenchError(f"{p} does not exist (give a kit folder or a bundle .safetensors)")
    raise BenchError(f"{p} is neither a kit folder nor a bundle .safetensors")


def profile_onnx(model_path: str | Path, shape: Sequence[int], cfg: BenchConfig, options: dict | None = None) -> dict[str, float]:
    """Time per op type in µs per call from ONNX Runtime's profiler (``enable_profiling``), largest first.

    Runs in this process; the trace file is removed afterwards.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t = Target("onnx", str(model_path), "?", tuple(shape), options={**(options or {}), "profile": str(Path(tmp) / "ort")})
        m = measure(t, cfg)
        events = json.loads(Path(m.info["profile_file"]).read_text())
    calls = 1 + cfg.warmup + cfg.runs
    per_op: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + float(ev.get("dur", 0)) / calls
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def _worker(argv: list[str]) -> int:
    """Entry point of :func:`measure_isolated`: one JSON job in argv, one JSON result line on stdout."""
    try:
        job = json.loads(argv[0])
        m = measure(Target.from_dict(job["target"]), BenchConfig(**job["config"]))
    except BenchError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(asdict(m)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
