"""``spikebot serve``: run the localisation service under uvicorn."""

from __future__ import annotations

import click
from pydantic import ValidationError

from server.maps import MapSpec, ReferenceSource, check_name, demo_spec
from server.settings import ServiceSettings


def build_settings(**given) -> ServiceSettings:
    """Settings from the options given (None = not given, so ``SPIKEBOT_*`` or the default applies)."""
    try:
        return ServiceSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as error:
        messages = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise click.UsageError(messages) from error


@click.command("serve")
@click.option("--map", "map_dir", type=click.Path(exists=True, file_okay=False),
              help="A map from `spikebot vpr build-map` (needs --method and the reference traverse it was built on).")
@click.option("--method", help="Method of --map (e.g. snn-ensemble, netvlad); with no --map, the method to build "
              "the map of --dataset/--reference with (sad builds in a second).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="Spiking methods: ensemble config JSON.")
@click.option("--name", "map_name", default=None, help="Name the served map answers to (default: demo, or map).")
@click.option("--dataset", default=None, help="Reference traverse: registered dataset name (default demo).")
@click.option("--reference", default=None, help="Reference traverse of --dataset.")
@click.option("--split", default="all", show_default=True, type=click.Choice(["all", "calibration", "test"]))
@click.option("--data-root", type=click.Path(file_okay=False), help="Where registered datasets live.")
@click.option("--reference-folder", type=click.Path(exists=True, file_okay=False), help="Reference images as a folder instead.")
@click.option("--demo", is_flag=True, help="Serve the demo route's SAD map (the default when no map or policy store is given).")
@click.option("--map-store", type=click.Path(file_okay=False), help="Also serve every map in this store folder.")
@click.option("--policy-store", type=click.Path(exists=True, file_okay=False),
              help="Serve the diffusion policies in this folder (checkpoints or training run folders, one per "
              "sub-folder) at /v1/policies; alone, it serves no demo map.")
@click.option("--flow-model", type=click.Path(exists=True, file_okay=False),
              help="A flow model (spikebot events flow-train): /v1/events/stream's 'flow' processor.")
@click.option("--action-model", type=click.Path(exists=True, file_okay=False),
              help="An action model (spikebot events action-train): /v1/events/stream's 'action' processor.")
@click.option("--host", default=None, help="Bind address [default: 127.0.0.1]; non-loopback needs --api-key.")
@click.option("--port", type=int, default=None, help="[default: 8000]")
@click.option("--api-key", "api_keys", multiple=True, help="Accepted X-API-Key (repeatable; or SPIKEBOT_API_KEYS).")
@click.option("--max-concurrency", type=int, default=None, help="Requests admitted at once [default: 2 x max batch].")
@click.option("--max-batch", type=int, default=None, help="Most frames one call of a map's method describes [default: 16].")
@click.option("--max-batch-wait-ms", type=float, default=None, help="How long a lone request waits for batch mates [default: 2].")
@click.option("--torch-threads", type=int, default=None, help="torch's threads [default: the usable cores].")
@click.option("--log-level", default="info", show_default=True)
def serve(map_dir, method, config_file, map_name, dataset, reference, split, data_root, reference_folder, demo,
          map_store, policy_store, flow_model, action_model, host, port, api_keys, max_concurrency, max_batch,
          max_batch_wait_ms, torch_threads, log_level):
    """Serve place recognition over HTTP: POST an image to /v1/maps/NAME/localize; and diffusion policies: POST
    observations to /v1/policies/NAME/act. See /docs for the API."""
    import uvicorn

    from server.app import create_app

    settings = build_settings(host=host, port=port, api_keys=list(api_keys) or None, map_store=map_store,
                              policy_store=policy_store, event_flow_model=flow_model,
                              event_action_model=action_model,
                              max_concurrency=max_concurrency, max_batch=max_batch,
                              max_batch_wait_ms=max_batch_wait_ms, torch_threads=torch_threads)
    source = ReferenceSource(dataset=dataset or "demo", reference=reference, split=split, data_root=data_root,
                             folder=reference_folder)
    if map_dir is not None:
        if method is None:
            raise click.UsageError("--map needs --method (the method that built it)")
        spec = MapSpec(name=check_name(map_name or "map"), method=method, source=source, map_dir=map_dir,
                       config_file=config_file)
    elif method is not None or dataset is not None or reference_folder is not None:
        spec = MapSpec(name=check_name(map_name or "map"), method=method or "sad", source=source, config_file=config_file)
    elif demo or (settings.map_store is None and settings.policy_store is None):
        spec = demo_spec(map_name or "demo")
    else:
        spec = None
    try:
        app = create_app(settings, maps=[spec] if spec else [])
    except ValueError as error:  # an unknown processor, a model that does not load: say so, no traceback
        raise click.UsageError(str(error)) from error
    # Frames (JPEG/PNG) and event chunks (zstd) arrive compressed: per-message deflate cost 3-6x in throughput.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, ws_per_message_deflate=False,
                timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None)
