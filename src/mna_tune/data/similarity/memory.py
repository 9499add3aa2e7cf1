"""Returning the memory of large arrays to the system (glibc), for the merge and split stages."""

from __future__ import annotations


def _libc():
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:  # by name: ctypes.util.find_library would fork a helper process of this (large) one
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def map_large_arrays() -> None:
    """Let every allocation over 1 MiB be its own mapping, returned to the system when freed.
    glibc otherwise raises that threshold after the first large free and serves the many
    same-sized vector chunks from its heap, where freed holes stay resident."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (a fixed value also stops its adjustment)
