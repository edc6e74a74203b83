"""Installing artifact kits: verify, unpack safely, swap atomically, smoke-test, roll back.

``kits/<format>/current`` is a symlink to ``v<N>``; switching kits is one
``rename`` of a new symlink over it (atomic on POSIX), and ``previous`` keeps
the kit that was active before. A new kit that fails its checksums or a smoke
inference is swapped back out and deleted: the device keeps running the old one.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from edge_agent.client.http import CentralClient, CentralError
from edge_agent.client.state import AgentHome
from edge_agent.client.trust import TrustError, verify_release

SmokeCheck = Callable[[Path, str], dict]


class KitRejected(RuntimeError):
    """A kit that failed verification or the smoke inference; the previous kit stays active."""


@dataclass
class Installed:
    format: str
    version: int
    path: Path
    updated: bool
    smoke: dict


def smoke_check(kit_dir: Path, fmt: str) -> dict:
    """Load the kit with :mod:`edge_agent.runtime` (checks every file's sha256) and run one zero input.

    Returns ``{"outputs": K, "ms": ...}``; raises on any failure. This is the one
    place that knows the runtime's API, so it is easy to adapt.
    """
    from edge_agent.runtime import load_kit, open_runner

    runtime, _, precision = fmt.partition("-")
    kit = load_kit(kit_dir, verify=True)
    runner = open_runner(kit, format=runtime, precision=precision or None, num_threads=1)
    x = np.zeros((1, *kit.input_spec.shape), dtype=np.float32)
    t0 = time.perf_counter()
    y = np.asarray(runner.run(x))
    ms = (time.perf_counter() - t0) * 1000
    if y.shape != (1, len(kit.labels)):
        raise KitRejected(f"smoke inference gave shape {list(y.shape)}, expected [1, {len(kit.labels)}]")
    if not np.isfinite(y).all():
        raise KitRejected("smoke inference gave non-finite logits")
    return {"outputs": len(kit.labels), "ms": round(ms, 3), "source_bundle_id": kit.source_bundle_id}


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Unpack regular files only, refusing absolute paths, ``..``, links and devices."""
    dest.mkdir(parents=True)
    with tarfile.open(tar_path, "r:*") as tar:
        for m in tar.getmembers():
            p = PurePosixPath(m.name)
            if m.isdir():
                continue
            if not m.isfile() or p.is_absolute() or ".." in p.parts or not p.parts:
                raise KitRejected(f"kit archive has an unsafe entry {m.name!r}")
            target = dest.joinpath(*p.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is None:
                raise KitRejected(f"kit archive entry {m.name!r} cannot be read")
            with src, target.open("wb") as f:
                shutil.copyfileobj(src, f)


def _point(link: Path, target: str) -> None:
    """Atomically make ``link`` a symlink to ``target`` (relative)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def active_kit(home: AgentHome, fmt: str) -> Path | None:
    cur = home.kits / fmt / "current"
    return cur.resolve() if cur.is_symlink() and cur.exists() else None


def install_kit(
    client: CentralClient,
    home: AgentHome,
    fmt: str,
    version: int | None = None,
    wait_s: float = 0.0,
    smoke: SmokeCheck = smoke_check,
) -> Installed:
    """Install the ``fmt`` kit of ``version`` (default: the newest accepted model version).

    ``wait_s`` bounds how long to wait for a kit the central is still building.
    """
    enr = home.enrollment()
    state = home.state()
    model_id = ""
    if version is None:
        # The current version's signed statement, checked against the rollback floor, names the version.
        cur = verify_release(client.get_json("/v1/versions/current"), enr.public_key, "model",
                             min_version=state.model_version)
        version, model_id = cur.version, cur.sha256
    elif state.model_version == version:
        model_id = state.model_bundle_id
    deadline = time.monotonic() + wait_s
    while True:
        rec = client.get_json(f"/v1/kits/{int(version)}/{fmt}")
        if rec.get("status") == "ready":
            break
        if rec.get("status") == "failed":
            raise CentralError(409, f"the central could not build the {fmt} kit for v{version}: {rec.get('error')}")
        if time.monotonic() >= deadline:
            raise CentralError(409, f"the {fmt} kit for v{version} is still {rec.get('status')} on the central; try again later")
        time.sleep(0.5)
    installed_version = int(state.kits.get(fmt, 0))
    st = verify_release(rec, enr.public_key, "kit", min_version=installed_version, fmt=fmt)
    if st.version != int(version):
        # Validly signed, but for another version: a mirror or cache must not swap releases.
        raise TrustError(f"asked for the {fmt} kit of v{version}, the signed release is the one of v{st.version}")
    fdir = home.kits / fmt
    target = fdir / f"v{st.version}"
    if st.version == installed_version and active_kit(home, fmt) == target.resolve():
        return Installed(fmt, st.version, target, updated=False, smoke={})
    tar_path = home.downloads / f"kit-{st.sha256}.tar"
    client.download(st.sha256, tar_path, st.sha256, size=st.size)
    staging = fdir / f".staging-v{st.version}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        safe_extract(tar_path, staging)
    except (tarfile.TarError, KitRejected) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise KitRejected(f"kit v{st.version} {fmt}: {e}") from None
    finally:
        tar_path.unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    cur, prev = fdir / "current", fdir / "previous"
    old = os.readlink(cur) if cur.is_symlink() else None
    _point(cur, target.name)
    try:
        report = smoke(cur, fmt)
        if model_id and report.get("source_bundle_id") and report["source_bundle_id"] != model_id:
            raise KitRejected("the kit was not built from the model version it claims")
    except Exception as e:  # noqa: BLE001 - whatever breaks, the device must keep a working kit
        if old is not None:
            _point(cur, old)
        else:
            cur.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise KitRejected(f"kit v{st.version} {fmt} failed verification ({msg}); rolled back to {old or 'no kit'}") from None
    if old is not None and old != target.name:
        _point(prev, old)
    state = home.state()
    state.kits[fmt] = st.version
    home.save_state(state)
    # Keep only current and previous: a device's storage is small.
    keep = {target.name, old}
    for d in fdir.iterdir():
        if d.is_dir() and not d.is_symlink() and d.name.startswith("v") and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
    return Installed(fmt, st.version, target, updated=True, smoke=report)


__all__ = ["Installed", "KitRejected", "TrustError", "active_kit", "install_kit", "safe_extract", "smoke_check"]
