"""Ray Serve scale-out: the localisation app of :func:`server.app.create_app` on N replicas, each robot's session
pinned to one replica by its ``X-Session-Id``. Optional: ``pip install -e '.[ray]'``; docs/scaling.md explains it.

Run it (one machine, or the head of a Ray cluster)::

    python -m server.ray_serve --demo --replicas 2 --port 8000
    serve run server.ray_serve:app_builder demo=true replicas=2      # Ray's own CLI, same application

Routing. Ray Serve's HTTP proxy hands each request to a replica of the ``Localizer`` deployment through the
consistent-hash request router that Ray ships (``ConsistentHashRouter``, experimental in Ray 2.60), keyed on the
request's ``X-Session-Id`` header (Ray's default session header, ``RAY_SERVE_SESSION_ID_HEADER_KEY``). Requests
with the same session id go to the same replica for as long as the set of replicas does not change; requests
without one are spread over all replicas. There is no fallback to another replica when the owner is busy
(``num_fallback_replicas=0``): another replica does not have the session, so the request waits for the owner.

Naming sessions. A session lives on the replica that created it, so the creating request must be routed like
the later ones: here ``POST /v1/sessions`` takes the session id from the client's ``X-Session-Id`` header (letters,
digits, ``._~-``, at most 128) and creates the session under that id, replacing any session of that id on that
replica. A client that always sends its own id on create and then uses the ``id`` the answer returns works with
plain ``spikebot serve`` too (which issues ids itself). When replicas come and go, some ids move to another
replica, which does not know them: the client gets 404 ``unknown_session``, creates the session again with the
same id, and its sequence buffer refills within ``sequence_length`` frames. Nothing else is lost: a session is
only that buffer.

Every response carries ``X-Serve-Replica``, the id of the replica that answered.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_response
from server.maps import LoadedMap, MapSpec, ReferenceSource, demo_spec
from server.sessions import Session, SessionStore
from server.settings import ServiceSettings
from vpr.sequence import SequenceConfig

SESSION_HEADER = "x-session-id"
REPLICA_HEADER = "x-serve-replica"
CONSISTENT_HASH_ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
SESSION_ID = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")

_requested_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("requested_session_id", default=None)


class ClientNamedSessions(SessionStore):
    """Sessions whose id is the one the client asked for on ``POST /v1/sessions`` (``X-Session-Id``), if any.

    The route calls ``create`` in a worker thread that inherits the request's context, where
    :class:`SessionIdFromHeader` has put the requested id; a session of that id already here is replaced.
    """

    def create(self, map_name: str, config: SequenceConfig, session_id: str | None = None) -> Session:
        return super().create(map_name, config, session_id if session_id is not None else _requested_id.get())


class SessionIdFromHeader:
    """ASGI middleware: hands ``X-Session-Id`` of ``POST /v1/sessions`` to :class:`ClientNamedSessions` (422
    ``invalid_request`` if malformed) and names the answering replica in ``X-Serve-Replica``."""

    def __init__(self, app: ASGIApp, replica: str | None = None):
        self.app = app
        self.replica = replica.encode() if replica else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start" and self.replica is not None:
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), self.replica)]}
            await send(message)

        token = None
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        if scope["method"] == "POST" and path.rstrip("/") == "/v1/sessions":
            headers = scope.get("headers", [])
            wanted = next((v.decode("latin-1") for k, v in headers if k == SESSION_HEADER.encode()), None)
            if wanted is not None:
                if not SESSION_ID.match(wanted):
                    response = error_response(422, "invalid_request",
                                              "X-Session-Id must be 1-128 letters, digits or ._~-")
                    return await response(scope, receive, send_named)
                token = _requested_id.set(wanted)
        try:
            await self.app(scope, receive, send_named)
        finally:
            if token is not None:
                _requested_id.reset(token)


class Preloaded:
    """A map source handing over a map the replica loaded before it took requests."""

    def __init__(self, loaded: LoadedMap):
        self.name, self.loaded = loaded.name, loaded

    def load(self) -> LoadedMap:
        return self.loaded


def build_replica_app(settings: ServiceSettings, maps: Sequence[Any] = (), replica: str | None = None) -> FastAPI:
    """:func:`server.app.create_app` with client-named sessions and the replica header: what each replica serves.

    Needs no Ray, so it is tested in the default run."""
    from server.app import create_app

    app = create_app(settings, maps=maps)
    app.state.service.sessions = ClientNamedSessions(settings.session_idle_seconds, settings.max_sessions)
    app.add_middleware(SessionIdFromHeader, replica=replica)
    return app


def replica_settings(settings: ServiceSettings, cpus_per_replica: float) -> ServiceSettings:
    """Each replica's settings: ``torch_threads`` follows the CPUs the replica reserves unless it was given (the
    default, the machine's usable cores, would let every replica on a machine claim all of them). Admission
    (``max_concurrency``) keeps its default: it counts requests sharing a micro-batch, not cores."""
    if "torch_threads" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"torch_threads": max(1, int(cpus_per_replica))})


def localizer_deployment(replicas: int = 2, cpus_per_replica: float = 1.0, max_ongoing_requests: int = 32):
    """The ``Localizer`` deployment class (imports Ray): ``.bind(settings, specs)`` makes the application."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    @serve.deployment(
        name="Localizer",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica},
        # above the app's own limit, so the app answers overload itself (503 overloaded + Retry-After)
        max_ongoing_requests=max_ongoing_requests,
        request_router_config=RequestRouterConfig(request_router_class=CONSISTENT_HASH_ROUTER,
                                                  request_router_kwargs={"num_fallback_replicas": 0}),
    )
    @serve.ingress()
    class Localizer:
        def __init__(self, settings: ServiceSettings, specs: Sequence[MapSpec]):
            self.settings = settings
            self.maps = [spec.load() for spec in specs]  # before this replica takes any request
            self.service_app: FastAPI | None = None  # not `app`: Serve's wrapper owns that name

        def __serve_build_asgi_app__(self) -> FastAPI:
            replica = serve.get_replica_context().replica_id.unique_id
            self.service_app = build_replica_app(self.settings, [Preloaded(m) for m in self.maps], replica)
            return self.service_app

        def check_health(self) -> None:
            state = self.service_app.state.service if self.service_app is not None else None
            if state is not None and state.load_error:
                raise RuntimeError(f"maps failed to load: {state.load_error}")

    return Localizer


def build_application(settings: ServiceSettings, specs: Sequence[MapSpec], replicas: int = 2,
                      cpus_per_replica: float = 1.0):
    """The Serve application: ``replicas`` Localizer replicas serving ``specs`` (plus ``settings.map_store``)."""
    deployment = localizer_deployment(replicas, cpus_per_replica)
    return deployment.bind(replica_settings(settings, cpus_per_replica), list(specs))


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def app_builder(args: dict[str, str]):
    """For ``serve run server.ray_serve:app_builder key=value ...``: ``replicas`` (2), ``cpus_per_replica`` (1),
    ``demo`` (true when no ``map_store`` is given), ``map_store``; other settings from ``SPIKEBOT_*``."""
    unknown = set(args) - {"replicas", "cpus_per_replica", "demo", "map_store"}
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}; expected replicas, cpus_per_replica, demo, map_store")
    settings = ServiceSettings(**({"map_store": args["map_store"]} if "map_store" in args else {}))
    demo = _flag(args["demo"]) if "demo" in args else settings.map_store is None
    return build_application(settings, [demo_spec()] if demo else [], int(args.get("replicas", 2)),
                             float(args.get("cpus_per_replica", 1)))


def main(argv: Sequence[str] | None = None) -> None:
    import click

    @click.command("ray-serve")
    @click.option("--replicas", type=click.IntRange(min=1), default=2, show_default=True)
    @click.option("--cpus-per-replica", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                  help="Ray CPUs each replica reserves; also its torch threads unless SPIKEBOT_TORCH_THREADS "
                  "is set.")
    @click.option("--demo", is_flag=True,
                  help="Serve the demo route's SAD map (the default when no map store is given).")
    @click.option("--dataset", default=None, help="Serve a SAD map of this registered dataset's reference traverse.")
    @click.option("--map-store", type=click.Path(file_okay=False), help="Also serve every map in this store folder.")
    @click.option("--host", default=None,
                  help="Serve's HTTP address [default: 127.0.0.1]; non-loopback needs --api-key.")
    @click.option("--port", type=int, default=None, help="[default: 8000]")
    @click.option("--api-key", "api_keys", multiple=True, help="Accepted X-API-Key (repeatable; or SPIKEBOT_API_KEYS).")
    @click.option("--address", default=None, help="Ray cluster to join (default: start a local one).")
    def command(replicas, cpus_per_replica, demo, dataset, map_store, host, port, api_keys, address):
        """Serve place recognition on Ray Serve replicas, sessions pinned by X-Session-Id (docs/scaling.md)."""
        import ray
        from ray import serve

        from server.cli import build_settings

        settings = build_settings(host=host, port=port, api_keys=list(api_keys) or None, map_store=map_store)
        if dataset is not None:
            specs = [MapSpec(name="map", source=ReferenceSource(dataset=dataset))]
        else:
            specs = [demo_spec()] if demo or settings.map_store is None else []
        ray.init(address=address, include_dashboard=False)
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(settings, specs, replicas, cpus_per_replica), name="spikebot", route_prefix="/",
                  blocking=True)

    command.main(args=list(argv) if argv is not None else None, prog_name="python -m server.ray_serve")


if __name__ == "__main__":
    # through the importable module, so Ray pickles this module's classes by reference, not as `__main__`'s
    from server.ray_serve import main as importable_main

    importable_main()
