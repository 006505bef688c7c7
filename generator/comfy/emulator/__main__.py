"""`python -m generator.comfy.emulator --port 8188`: the emulator without Django."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from .server import Emulator, serve_forever


def main() -> None:
    parser = argparse.ArgumentParser(description="A ComfyUI 0.3.64 emulator that paints demo pictures.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--step-seconds", type=float, default=0.1, help="time per sampling step")
    parser.add_argument("--no-preview", action="store_true", help="send no preview frames")
    parser.add_argument("--root", help="folder for input/, output/, temp/ (default: a temporary one)")
    parser.add_argument(
        "--fault-control", action="store_true", help="serve POST /_faults to loopback clients (tests)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    emulator = Emulator(
        args.host,
        args.port,
        args.step_seconds,
        preview=not args.no_preview,
        root=args.root,
        fault_control=args.fault_control,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(emulator))


if __name__ == "__main__":
    main()
