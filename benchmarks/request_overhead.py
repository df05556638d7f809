"""What one localisation costs the service besides its method: the app in-process, a method that answers at once.

    .venv/bin/python benchmarks/request_overhead.py [--requests 400] [--places 3375]

Builds the FastAPI app with one map whose method returns a random row instantly, drives it through httpx's ASGI
transport in this process (no sockets, no uvicorn), and prints the mean wall time per sequential request with a
session: routing, dependencies, body, admission, the batcher's queue (``max_batch_wait_ms`` for a lone request
included), decoding a 64x32 PNG, sequence matching, ranking and the JSON answer. The client's own work is included.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time

import httpx
import numpy as np
from PIL import Image

from server.app import create_app
from server.maps import LoadedMap
from server.settings import ServiceSettings


class InstantMethod:
    """A method that answers at once, so the measurement is the service around it."""

    name = "instant"

    def __init__(self, n_places: int):
        self.row = np.random.default_rng(0).random(n_places).astype(np.float32)

    def distances(self, images) -> np.ndarray:
        return np.tile(self.row, (len(images), 1))


class Loaded:
    def __init__(self, loaded: LoadedMap):
        self.name, self.loaded = loaded.name, loaded

    def load(self) -> LoadedMap:
        return self.loaded


async def measure(requests: int, n_places: int) -> float:
    app = create_app(ServiceSettings(warm_up=False), maps=[Loaded(LoadedMap("m", InstantMethod(n_places), n_places))])
    encoded = io.BytesIO()
    Image.new("RGB", (64, 32)).save(encoded, "PNG")
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        while (await client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.05)
        session = (await client.post("/v1/sessions", json={"map": "m", "sequence_length": 5})).json()["id"]
        headers = {"content-type": "image/png", "X-Session-Id": session}
        for _ in range(50):
            await client.post("/v1/maps/m/localize", content=encoded.getvalue(), headers=headers)
        started = time.perf_counter()
        for _ in range(requests):
            response = await client.post("/v1/maps/m/localize", content=encoded.getvalue(), headers=headers)
            response.raise_for_status()
        return (time.perf_counter() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--places", type=int, default=3375)
    args = parser.parse_args()
    seconds = asyncio.run(measure(args.requests, args.places))
    print(f"{seconds * 1e3:.2f} ms a request ({args.requests} sequential requests, {args.places} places, in-process)")


if __name__ == "__main__":
    main()
