"""One 64 B append's fsync, on the trio loop against through ``trio.to_thread``, alternating.

python fsync_thread.py DIR      # prints the p50 and p90 of each, in ms
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import trio


async def main() -> None:
    with tempfile.TemporaryDirectory(dir=sys.argv[1]) as directory:
        fd = os.open(os.path.join(directory, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        inline: list[float] = []
        thread: list[float] = []
        for k in range(600):
            os.write(fd, b"x" * 64)
            started = time.perf_counter()
            if k % 2:
                await trio.to_thread.run_sync(os.fsync, fd)
                thread.append(time.perf_counter() - started)
            else:
                os.fsync(fd)
                await trio.lowlevel.checkpoint()
                inline.append(time.perf_counter() - started)
        os.close(fd)
        for name, times in (("inline", inline), ("thread", thread)):
            times.sort()
            p50, p90 = statistics.median(times), times[int(len(times) * 0.9)]
            print(f"{name}: p50 {1000 * p50:.3f} ms  p90 {1000 * p90:.3f} ms")


if __name__ == "__main__":
    trio.run(main)
