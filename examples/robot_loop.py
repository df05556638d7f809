"""A robot's localisation loop: frames from a folder or a camera, sent at a fixed rate within one session.

    python examples/robot_loop.py --url http://localhost:8000 --map demo --folder frames/ --rate-hz 5
    python examples/robot_loop.py --url http://localhost:8000 --map campus --camera 0 --api-key "$KEY"

Prints one line per frame: place, confidence, the service's total_ms and the round trip. The session is closed at
the end, on Ctrl-C, or on an error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from server.client import LocalisationClient, ServiceError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def folder_frames(folder: Path) -> Iterator[tuple[str, bytes]]:
    """The folder's JPEG/PNG files sorted by name, sent as they are (no re-encoding)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no .png/.jpg images in {folder}")
    for path in paths:
        yield path.name, path.read_bytes()


def camera_frames(index: int) -> Iterator[tuple[str, np.ndarray]]:
    import cv2

    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise SystemExit(f"cannot open camera {index}")
    try:
        count = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield f"frame{count:06d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)  # the service expects RGB
            count += 1
    finally:
        capture.release()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8000", help="service base URL")
    parser.add_argument("--map", required=True, help="map name (see GET /v1/maps)")
    parser.add_argument("--api-key", default=None, help="X-API-Key, when the service requires one")
    parser.add_argument("--sequence-length", type=int, default=5, help="frames each answer is sequence-matched over")
    parser.add_argument("--rate-hz", type=float, default=5.0, help="frames sent per second (at most)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--jpeg", action="store_true", help="send camera frames as JPEG instead of PNG")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path, help="folder of .png/.jpg frames, sent in name order")
    source.add_argument("--camera", type=int, help="OpenCV VideoCapture index")
    args = parser.parse_args(argv)
    if args.rate_hz <= 0 or args.sequence_length < 1:
        parser.error("--rate-hz must be positive and --sequence-length at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    frames = folder_frames(args.folder) if args.folder is not None else camera_frames(args.camera)
    period = 1.0 / args.rate_hz
    with LocalisationClient(args.url, api_key=args.api_key, image_format="jpeg" if args.jpeg else "png") as client:
        try:
            client.wait_ready(timeout=60)
            with client.session(args.map, args.sequence_length) as session_id:
                print(f"session {session_id} on map {args.map!r} (sequence length {args.sequence_length})")
                next_at = time.monotonic()
                for name, frame in frames:
                    started = time.monotonic()
                    answer = client.localize(args.map, frame, top_k=args.top_k, session_id=session_id)
                    round_trip = (time.monotonic() - started) * 1e3
                    print(f"{name}: place {answer.place:5d}  confidence {answer.confidence:.2f}  "
                          f"server {answer.server_timing.total_ms:6.1f} ms  round trip {round_trip:6.1f} ms  "
                          f"(over {answer.sequence_length} frames)", flush=True)
                    next_at += period
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    next_at = max(next_at, time.monotonic() - period)  # fall behind gracefully, no bursts
        except KeyboardInterrupt:
            print("interrupted; session closed", file=sys.stderr)
            return 130
        except ServiceError as error:
            print(f"service error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
