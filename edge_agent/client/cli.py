"""``edge-agent`` verbs that talk to the central: enroll, pull, upload, sync, run, pull-kit, status.

Wire with ``edge_agent.client.cli.register(app)`` on the agent's typer app.
Exit codes (:mod:`edge_agent.cli_support`, docs/cli.md): 0 done; 1 refused (bad signature,
rollback, rejected upload, kit failed); 2 bad input or not enrolled; 75 the central is
unreachable, try again later (the work is kept, e.g. in the outbox).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from edge_agent.cli_support import EXIT_REFUSED, EXIT_TEMPFAIL, EXIT_USAGE, emit, fail, friendly, note
from edge_agent.client.state import AgentHome, Enrollment

# httpx and cryptography are imported by the commands that talk to the central, not when the app is built:
# `edge-agent train` on a small device does not pay for them (about 10 MB resident).
if TYPE_CHECKING:
    from edge_agent.client.http import CentralClient


def _client(home: AgentHome) -> CentralClient:
    from edge_agent.client.http import CentralClient

    enr = home.enrollment()
    return CentralClient(enr.server, enr.token)


JSON = typer.Option(False, "--json", help="print one JSON object on stdout (notes go to stderr)")


def _deliver(home: AgentHome, client: CentralClient, as_json: bool = False, force: bool = False) -> list[dict]:
    """Deliver the outbox; one dict per bundle (``bundle_id``, ``status``, ...). A temporary failure propagates (exit 75)."""
    from edge_agent.client.http import CentralUnreachable
    from edge_agent.client.outbox import Outbox

    outbox = Outbox(home.outbox)
    try:
        results = outbox.deliver(client, force=force)
    except CentralUnreachable:
        n = len(outbox.pending())
        typer.echo(f"central unavailable: {n} upload(s) kept in the outbox {home.outbox}; `edge-agent status` "
                   "shows when each is tried again", err=True)
        raise
    done = []
    for r in results:
        if r.status == "rejected":
            typer.echo(f"rejected {r.bundle_id[:12]}: {r.detail} (moved to {outbox.rejected})", err=True)
        elif r.status != "waiting":
            upload = f", upload #{r.upload_id}" if r.upload_id is not None else ""
            # Without --json this line is the result (stdout); with it, the JSON is.
            typer.echo(f"delivered {r.bundle_id[:12]} ({'already stored' if r.status == 'duplicate' else 'stored'}"
                       f"{upload})", err=as_json)
        done.append({"bundle_id": r.bundle_id, "status": r.status, "upload_id": r.upload_id, "detail": r.detail})
    waiting = [e for e in outbox.pending() if e.waiting()] if any(r.status == "waiting" for r in results) else []
    if waiting:
        e = waiting[0]
        typer.echo(f"{len(outbox.pending())} upload(s) wait in the outbox: {e.bundle_id[:12]} is tried again at "
                   f"{e.to_dict()['next_try_at']} (last error: {e.last_error}); `edge-agent sync --retry-now` tries now",
                   err=True)
    return done


def _exit_for(done: list[dict]) -> None:
    if any(d["status"] == "rejected" for d in done):
        raise typer.Exit(EXIT_REFUSED)
    if any(d["status"] == "waiting" for d in done):
        raise typer.Exit(EXIT_TEMPFAIL)


def register(app: typer.Typer) -> None:
    """Add the central-facing verbs to the ``edge-agent`` typer app."""

    @app.command()
    @friendly
    def enroll(
        server: Annotated[str, typer.Option(help="central URL, e.g. http://central:8080")],
        token: Annotated[str, typer.Option(help="one-time enrolment token from `central devices add`")],
        force: bool = typer.Option(False, help="replace an existing enrolment"),
        as_json: bool = JSON,
    ) -> None:
        """Enrol this device with the central and pin the central's signing key.

        Example: [bold]edge-agent enroll --server http://central:8080 --token enr_0123abcd[/]
        """
        from edge_agent.client.http import CentralClient

        home = AgentHome()
        if home.enrollment_file.exists() and not force:
            fail(EXIT_USAGE, f"already enrolled ({home.enrollment_file}); use --force to enrol again")
        with CentralClient(server) as c:
            body = c.post_json("/v1/enroll", {"token": token})
        home.save_enrollment(Enrollment(server=server.rstrip("/"), device=body["device"], token=body["token"],
                                        public_key=body["public_key"]))
        emit(as_json, {"device": body["device"], "server": server.rstrip("/"), "public_key": body["public_key"]},
             f"enrolled as {body['device']} with {server}; central key pinned ({body['public_key'][:16]}…)")

    @app.command()
    @friendly
    def pull(as_json: bool = JSON) -> None:
        """Download the current central model (signed, verified, never older than the one we have).

        Example: [bold]edge-agent pull --json[/]
        """
        from edge_agent.client.pull import pull_model

        home = AgentHome()
        with _client(home) as c:
            p = pull_model(c, home)
        emit(as_json, {"updated": p.updated, "version": p.version, "path": str(p.path)},
             f"{'pulled' if p.updated else 'up to date:'} central v{p.version} -> {p.path}")

    @app.command()
    @friendly
    def upload(
        file: Annotated[Path, typer.Argument(help="a bundle this device fine-tuned")],
        base_version: int = typer.Option(
            None, min=0, max=2**63 - 1, help="central version it was fine-tuned from (default: from its manifest)"
        ),
        as_json: bool = JSON,
    ) -> None:
        """Upload a fine-tuned bundle; exits 0 only once the central acknowledged it (75: kept in the outbox).

        Example: [bold]edge-agent upload dev1.safetensors --base-version 3 --json[/]
        """
        # torch is imported only when a bundle is really read: enroll/sync stay fast.
        from edge_agent.bundle import load_bundle
        from edge_agent.client.outbox import Outbox

        home = AgentHome()
        load_bundle(file)  # refuse a broken file here, not after it sat in the outbox
        entry = Outbox(home.outbox).add(file, base_version)
        note(f"queued {entry.bundle_id[:12]} in the outbox")
        with _client(home) as c:
            done = _deliver(home, c, as_json, force=True)  # asked for now: earlier waiting entries go too
        emit(as_json, {"bundle_id": entry.bundle_id, "deliveries": done})
        _exit_for(done)

    @app.command()
    @friendly
    def sync(
        retry_now: bool = typer.Option(False, "--retry-now", help="try uploads whose backoff has not elapsed yet"),
        as_json: bool = JSON,
    ) -> None:
        """Deliver the outbox (each bundle exactly once, oldest first) and pull the current model.

        An upload the central answered with a temporary error waits out its backoff
        (`edge-agent status` shows until when) unless --retry-now; exit 75 while any waits.

        Example: [bold]edge-agent sync --retry-now --json[/]
        """
        from edge_agent.client.pull import pull_model

        home = AgentHome()
        with _client(home) as c:
            done = _deliver(home, c, as_json, force=retry_now)
            p = pull_model(c, home)
        emit(as_json, {"deliveries": done, "model": {"updated": p.updated, "version": p.version, "path": str(p.path)}},
             f"{'pulled' if p.updated else 'up to date:'} central v{p.version}")
        _exit_for(done)

    @app.command()
    @friendly
    def run(
        data: Annotated[Path, typer.Option(help="local data: one folder per class")],
        epochs: int = typer.Option(30, help="fine-tuning epochs"),
        seed: int = typer.Option(0),
        loss: Optional[str] = typer.Option(
            None, help="ce, bce-noise or bce-jigsaw, as for edge-agent train (default: bce-jigsaw for images, ce for audio)"
        ),
        as_json: bool = JSON,
    ) -> None:
        """Pull the current model, fine-tune it on local data, upload the result, in one go.

        Example: [bold]edge-agent run --data photos/ --epochs 30 --seed 1 --json[/]
        """
        from edge_agent.client.outbox import Outbox
        from edge_agent.client.pull import pull_model
        from edge_agent.train import TrainConfig, train_bundle

        home = AgentHome()
        with _client(home) as c:
            earlier = _deliver(home, c, as_json)  # earlier work first: arrival order is consolidation order
            p = pull_model(c, home)
            out = home.trained / f"from-v{p.version}-{time.strftime('%Y%m%dT%H%M%S')}.safetensors"
            cfg = TrainConfig(epochs=epochs, seed=seed, batch_size=None, loss=loss)  # None: the device default for its kind
            info = train_bundle(p.path, data, out, cfg=cfg, progress=sys.stderr.isatty())
            typer.echo(f"trained on {', '.join(info['classes'])} -> {out}", err=as_json)
            Outbox(home.outbox).add(out, p.version)
            done = earlier + _deliver(home, c, as_json)
        emit(as_json, {"model": {"updated": p.updated, "version": p.version, "path": str(p.path)},
                       "trained": info, "deliveries": done})
        _exit_for(done)

    @app.command("pull-kit")
    @friendly
    def pull_kit(
        format: str = typer.Option("tflite-int8", "--format", help="onnx-int8, tflite-int8, onnx-fp32, ..."),
        version: int = typer.Option(None, help="central version (default: the current one)"),
        wait: float = typer.Option(120.0, help="seconds to wait for a kit the central is still building"),
        as_json: bool = JSON,
    ) -> None:
        """Install the artifact kit of the current version: verify, swap atomically, smoke-test, roll back on failure.

        Example: [bold]edge-agent pull-kit --format tflite-int8 --wait 300 --json[/]
        """
        from edge_agent.client.kits import install_kit

        home = AgentHome()
        with _client(home) as c:
            k = install_kit(c, home, format, version=version, wait_s=wait)
        path = home.kits / format / "current"
        emit(as_json, {"format": format, "version": k.version, "updated": k.updated, "path": str(path), "smoke": k.smoke},
             f"installed {format} kit v{k.version} -> {path} (smoke: {k.smoke})" if k.updated
             else f"up to date: {format} kit v{k.version}")

    @app.command()
    @friendly
    def status(as_json: bool = JSON) -> None:
        """What this agent has: enrolment, model version, kits, and the uploads waiting in the outbox (tries, last error, next try).

        Example: [bold]edge-agent status --json[/]
        """
        from edge_agent.client.kits import active_kit
        from edge_agent.client.outbox import Outbox

        home = AgentHome()
        enr = home.enrollment()
        st = home.state()
        kits = {fmt: {"version": v, "path": str(active_kit(home, fmt) or "")} for fmt, v in st.kits.items()}
        info = {"server": enr.server, "device": enr.device, "home": str(home.root), "model_version": st.model_version,
                "model": str(home.current_model() or ""), "kits": kits,
                "outbox": [e.to_dict() for e in Outbox(home.outbox).pending()]}
        if as_json:
            emit(True, info)
            return
        typer.echo(f"device {enr.device} at {enr.server} (home {home.root})")
        typer.echo(f"model: v{st.model_version} {info['model']}")
        for fmt, k in kits.items():
            typer.echo(f"kit {fmt}: v{k['version']} {k['path']}")
        typer.echo(f"outbox: {len(info['outbox'])} upload(s) waiting")
        for e in info["outbox"]:
            why = f", {e['attempts']} tries, last error: {e['last_error']}" if e["attempts"] else ", not tried yet"
            when = f", next try {e['next_try_at']}" if e["next_try_at"] else ""
            base = f"base v{e['base_version']}" if e["base_version"] is not None else "base from its manifest"
            typer.echo(f"  {e['bundle_id'][:12]} ({base}{why}{when})")
