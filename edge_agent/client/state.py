"""The agent's state on disk, under ``EDGE_AGENT_HOME`` (default ``~/.edge-agent``).

Layout::

    enrollment.json   server URL, device name, device token, pinned public key (0600)
    state.json        newest accepted model version, installed kit versions
    models/v<N>.safetensors   pulled central versions (verified)
    trained/          bundles this device fine-tuned
    outbox/           uploads not yet acknowledged by the central
    kits/<format>/v<N>/, kits/<format>/current -> v<N>, previous -> v<M>
    downloads/        partial downloads (resumed with HTTP Range)

Every file is written atomically (temp file, fsync, rename), so a power cut
leaves either the old or the new state, never a mix.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_agent.atomic import write_atomic


class NotEnrolled(RuntimeError):
    """The agent has no enrolment yet."""


def default_home() -> Path:
    return Path(os.environ.get("EDGE_AGENT_HOME") or Path.home() / ".edge-agent")


def write_json_atomic(path: Path, obj, mode: int = 0o644) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode=mode)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename: readers see the old file or the new one, never a partial one."""
    write_atomic(path, data)


@dataclass
class Enrollment:
    server: str
    device: str
    token: str
    public_key: str


@dataclass
class AgentState:
    """What the agent has accepted; versions only grow (rollback protection)."""

    model_version: int = 0
    model_bundle_id: str = ""
    kits: dict = field(default_factory=dict)  # format -> installed version


class AgentHome:
    """Paths and state files of one agent."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_home()
        self.models = self.root / "models"
        self.trained = self.root / "trained"
        self.outbox = self.root / "outbox"
        self.kits = self.root / "kits"
        self.downloads = self.root / "downloads"

    @property
    def enrollment_file(self) -> Path:
        return self.root / "enrollment.json"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def save_enrollment(self, e: Enrollment) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        write_json_atomic(self.enrollment_file, asdict(e), mode=0o600)  # holds the device token

    def enrollment(self) -> Enrollment:
        if not self.enrollment_file.exists():
            raise NotEnrolled(f"not enrolled (no {self.enrollment_file}): run `edge-agent enroll --server URL --token TOKEN`")
        raw = json.loads(self.enrollment_file.read_text())
        return Enrollment(**{k: raw[k] for k in ("server", "device", "token", "public_key")})

    def state(self) -> AgentState:
        if not self.state_file.exists():
            return AgentState()
        raw = json.loads(self.state_file.read_text())
        return AgentState(**{k: v for k, v in raw.items() if k in AgentState.__dataclass_fields__})

    def save_state(self, s: AgentState) -> None:
        write_json_atomic(self.state_file, asdict(s))

    def model_path(self, version: int) -> Path:
        return self.models / f"v{int(version)}.safetensors"

    def current_model(self) -> Path | None:
        s = self.state()
        p = self.model_path(s.model_version) if s.model_version else None
        return p if p is not None and p.is_file() else None
