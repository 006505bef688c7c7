"""A ComfyUI stand-in: the demo backend, and the double the tests run against."""

from .server import Emulator, Faults

__all__ = ["Emulator", "Faults"]
