"""What the server checks in an upload before storing it: the bundle, its lineage, and that it can be consolidated.

The consolidation rule is :func:`edge_agent.compat.check_compatible`, the same one
``central consolidate`` applies, so an accepted upload never blocks the queue. It
runs on the manifests before the model is built.
"""

from __future__ import annotations

from central.server.registry import Registry
from edge_agent.bundle import BundleError, Manifest, load_bundle_bytes, read_manifest


def base_version_for(registry: Registry, manifest: Manifest, base_version: int | None) -> dict:
    """The published version ``manifest`` was fine-tuned from (``base_version`` if given, else from its parents)."""
    if base_version is not None:
        base = registry.get_version(base_version)
        if base is None:
            raise BundleError(f"base version {base_version} does not exist")
        if base["bundle_id"] not in manifest.parents:
            raise BundleError(f"the bundle was not fine-tuned from central v{base_version} (its parents differ)")
        return base
    bases = [v for v in (registry.version_for_bundle(p) for p in manifest.parents) if v is not None]
    if not bases:
        raise BundleError("the bundle does not derive from any published central version")
    return bases[-1]


def validate_upload(registry: Registry, data: bytes, base_version: int | None = None) -> tuple[str, int]:
    """Check an upload completely; returns ``(bundle id, base version)`` or raises a one-line :class:`BundleError`.

    Header and manifest, lineage, fit with the base version's manifest, then
    checksum, weights, tensor names, shapes and dtypes.
    """
    manifest = read_manifest(data)  # header and manifest only
    base = base_version_for(registry, manifest, base_version)
    ref = read_manifest(registry.store.path(base["bundle_id"]).read_bytes())
    bundle = load_bundle_bytes(data, expect=ref)
    return bundle.id, base["version"]
