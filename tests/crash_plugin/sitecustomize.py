"""Loaded at interpreter start when this folder is on PYTHONPATH (the decoder-crash tests put it there):
makes Pillow's PNG decoder kill its process with SIGSEGV, like a crashing C decoder, on any PNG whose
file name contains "boom"."""

import os
import signal

from PIL import PngImagePlugin

_open = PngImagePlugin.PngImageFile._open


def _crashing_open(self):
    if "boom" in os.path.basename(str(getattr(self, "filename", "") or "")):
        os.kill(os.getpid(), signal.SIGSEGV)
    _open(self)


PngImagePlugin.PngImageFile._open = _crashing_open
