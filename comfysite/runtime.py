"""Interpreter settings for the long-running processes (web, `serve`, `comfy_bridge`).

Each of them relays progress from an event loop that shares the GIL with worker threads (web
requests, the bridge's database work). Both settings keep those threads from holding the relay
back.
"""

import contextlib
import ctypes
import gc
import sys
import threading

# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The
# event loop gives the GIL up at every turn (each epoll_wait, each socket send) and, while a
# thread renders a page or runs a query, waits up to this long to get it back: a fragment that
# takes five turns from ComfyUI's socket to the browser's could wait five times. At 1 ms a
# burst of fifty form posts held the slowest progress fragments back half as long, for no
# measurable cost in throughput.
GIL_SWITCH_SECONDS = 0.001


def prepare_long_running_process() -> None:
    """Call once everything is loaded, before serving."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    # What is loaded by now lives as long as the process: keep it out of the garbage
    # collector's full passes, which stop every thread (the relay included). With it, a full
    # pass in `manage.py serve` took 30-45 ms under load; without it, a fraction of that.
    gc.freeze()


PR_SET_NAME = 15  # prctl(2)


def name_os_thread() -> None:
    """Give the calling thread's Python name ("web-0_0", "bridge-db_0") to the operating
    system's thread too (Linux; elsewhere nothing), so `top -H` and the benchmarks can tell the
    web threads, the bridge's database thread and the event loop apart. Passed as the
    `initializer` of their thread pools."""
    if not sys.platform.startswith("linux"):
        return
    name = threading.current_thread().name.encode()[:15]  # the kernel keeps 15 bytes
    with contextlib.suppress(OSError, AttributeError):  # no prctl here: names are a convenience
        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
