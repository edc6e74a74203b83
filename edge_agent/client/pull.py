"""Pulling the current central model: signed, hashed, never older than what we have."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent.client.http import CentralClient
from edge_agent.client.state import AgentHome
from edge_agent.client.trust import MODEL_FORMAT, TrustError, verify_release


@dataclass
class Pulled:
    version: int
    bundle_id: str
    path: Path
    updated: bool


def pull_model(client: CentralClient, home: AgentHome, release: dict | None = None) -> Pulled:
    """Fetch the central's current version into ``models/v<N>.safetensors``.

    Refuses (``TrustError``) an unsigned or wrongly signed release, one older
    than the version already accepted, or bytes not matching the signed sha256;
    then validates the bundle itself before recording it as accepted.
    """
    enr = home.enrollment()
    state = home.state()
    release = release or client.get_json("/v1/versions/current")
    st = verify_release(release, enr.public_key, "model", min_version=state.model_version, fmt=MODEL_FORMAT)
    dest = home.model_path(st.version)
    if st.version == state.model_version and dest.is_file() and state.model_bundle_id == st.sha256:
        return Pulled(st.version, st.sha256, dest, updated=False)
    if st.version == state.model_version and state.model_bundle_id and state.model_bundle_id != st.sha256:
        raise TrustError(f"central v{st.version} is signed with different bytes than the v{st.version} we already have")
    client.download(st.sha256, dest, st.sha256, size=st.size)
    # torch is imported only once there is a bundle to check.
    from edge_agent.bundle import BundleError, load_bundle

    try:
        load_bundle(dest)
    except BundleError as e:
        dest.unlink(missing_ok=True)
        raise TrustError(f"central v{st.version} is signed but is not a valid bundle: {e}") from None
    state = home.state()
    state.model_version, state.model_bundle_id = st.version, st.sha256
    home.save_state(state)
    return Pulled(st.version, st.sha256, dest, updated=True)
