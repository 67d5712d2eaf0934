#!/usr/bin/env python3
"""How a checkpoint's files sit in the page cache: the share of each file cached, and (as root)
the share of its cached pages that are in large folios (more than 4 KiB).

    python3 bench/page_cache.py FILE_OR_FOLDER...

Why it matters: quench and the I/O floor map their input, and mapping and releasing a file
cached in 4 KiB folios costs about twice the system time of the same bytes in large folios
(bench/README.md, "Page-cache folio size"). A "warm" bench run is also partly a cold one when
the cache has lost some of the input since scripts/bench read it.

Cached share: cachestat(2) (Linux >= 6.5; no privileges). Folio sizes: each cached page of
a read-only mapping is looked up in /proc/self/pagemap and /proc/kpageflags (root only); a page
that is not mapped yet is faulted in by the lookup only if it is cached (mincore first), so the
check itself reads nothing from disk (unless a page is evicted between the two).
"""
import ctypes
import mmap
import os
import struct
import sys

PAGE = 4096
SYS_CACHESTAT = 451  # the same number on every architecture
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 1 << 15, 1 << 16

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def cached_pages(fd, size):
    rng = struct.pack("<QQ", 0, size)
    out = ctypes.create_string_buffer(40)
    if libc.syscall(SYS_CACHESTAT, fd, rng, out, 0) != 0:
        return None
    return struct.unpack("<5Q", out.raw)[0]


def large_folio_share(fd, size):
    """Share of the cached pages in large folios, or None without /proc/kpageflags access."""
    try:
        pagemap = open("/proc/self/pagemap", "rb", buffering=0)
        kflags = open("/proc/kpageflags", "rb", buffering=0)
        kflags.read(8)
    except OSError:
        return None
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return None
    try:
        pages = (size + PAGE - 1) // PAGE
        vec = ctypes.create_string_buffer(pages)
        if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
            return None
        large = small = 0
        for i in range(pages):
            if not vec.raw[i] & 1:
                continue
            ctypes.c_ubyte.from_address(addr + i * PAGE).value  # map it: a minor fault, no read
            pagemap.seek((addr // PAGE + i) * 8)
            entry = struct.unpack("<Q", pagemap.read(8))[0]
            if not entry >> 63:
                continue
            kflags.seek((entry & ((1 << 55) - 1)) * 8)
            flags = struct.unpack("<Q", kflags.read(8))[0]
            if flags & (KPF_COMPOUND_HEAD | KPF_COMPOUND_TAIL):
                large += 1
            else:
                small += 1
        return large / max(1, large + small)
    finally:
        libc.munmap(ctypes.c_void_p(addr), size)


def files_of(paths):
    for p in paths:
        if os.path.isdir(p):
            yield from sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".safetensors"))
        else:
            yield p


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in files_of(sys.argv[1:]):
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        cached = cached_pages(fd, size)
        share = large_folio_share(fd, size) if size else None
        os.close(fd)
        c = "?" if cached is None else f"{100 * cached / max(1, (size + PAGE - 1) // PAGE):5.1f}%"
        f = "? (needs root)" if share is None else f"{100 * share:5.1f}%"
        print(f"{c} cached, {f} of that in large folios  {path}")


if __name__ == "__main__":
    main()
