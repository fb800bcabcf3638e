"""Loaded at interpreter start when this folder is on PYTHONPATH (the decoder-crash tests put it there):
makes Pillow's PNG decoder kill its process with SIGSEGV, like a crashing C decoder, on any PNG whose
file name contains "boom". The signal goes to the decoding thread itself, as a real segfault does (a
signal sent to the process may be taken by another thread while this one goes on decoding)."""

import os
import signal
import threading

from PIL import PngImagePlugin

_open = PngImagePlugin.PngImageFile._open


def _crashing_open(self):
    if "boom" in os.path.basename(str(getattr(self, "filename", "") or "")):
        signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
    _open(self)


PngImagePlugin.PngImageFile._open = _crashing_open
