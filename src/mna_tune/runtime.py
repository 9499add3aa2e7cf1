"""Process-level settings for the model stages."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def keep_freed_memory() -> bool:
    """Let glibc reuse freed heap memory for large tensors instead of mapping fresh pages.

    Every training step allocates and frees logits of about 150k vocabulary entries per
    token. By default glibc hands each such block back to the kernel and maps a new
    zeroed one next step; on the CPU that page-fault churn took more time than the
    arithmetic (the tiny model's train stage ran 2.5x faster without it). Must run
    before the first large allocation. A no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    largest = 2**31 - 1
    return bool(mallopt(m_mmap_threshold, largest)) and bool(mallopt(m_trim_threshold, largest))
