"""Small helpers shared by the benchmarks: a process-tree memory sampler, timing, tables."""

from __future__ import annotations

import glob
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from typing import Sequence


def det_xml_paths(root: str, split: str) -> list[str]:
    """The annotation files of a DET tree's split (ROOT/Annotations/DET/<split>/**.xml), sorted."""
    return sorted(glob.glob(os.path.join(root, "Annotations", "DET", split, "**", "*.xml"), recursive=True))


def det_pairs(root: str, split: str) -> list[tuple[str, str]]:
    """(annotation, image) of every annotated image of a DET tree's split, sorted."""
    ann_root = os.path.join(root, "Annotations", "DET", split)
    img_root = os.path.join(root, "Data", "DET", split)
    return [(xml, os.path.join(img_root, os.path.relpath(xml, ann_root)[:-4] + ".JPEG"))
            for xml in det_xml_paths(root, split)]


def machine() -> str:
    """One line naming the machine a figure was measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores {model or platform.processor()}, {platform.system()} {platform.release()}"


def _children(pid: int) -> list[int]:
    """Child pids of every thread of `pid` (Beam starts its worker processes from threads)."""
    children = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return children


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants (Beam's worker processes too)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _rss_bytes(p)
        stack.extend(_children(p))
    return total


class PeakMemory:
    """Samples the RSS of a process tree every `interval` seconds, in a `with` block; `.peak`
    after it.

    Built for runs of many minutes: a sample that fails (a process ending mid-walk, an odd
    /proc read) is skipped instead of ending the sampler thread, so the peak keeps tracking;
    `.samples` counts the samples taken and `.failed` the ones skipped.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval, self.peak, self.samples, self.failed = pid, interval, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, tree_rss(self.pid))
                self.samples += 1
            except Exception:  # noqa: BLE001 - one lost sample, never a lost sampler
                self.failed += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# What run_measured keeps of a command's output: a long run's logs go to a file on disk, not
# into the parent's memory, and only their end is read back (enough for an error message).
OUTPUT_TAIL = 1 << 16


def _tail(f) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - OUTPUT_TAIL))
    return f.read().decode("utf-8", "replace")


def run_measured(cmd: Sequence[str], **kwargs) -> tuple[float, int, subprocess.CompletedProcess]:
    """Runs a command; returns (wall seconds, peak tree RSS bytes, completed process whose
    stdout and stderr are the last OUTPUT_TAIL bytes of each)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, **kwargs)
        with PeakMemory(proc.pid) as mem:
            proc.wait()
        seconds = time.perf_counter() - start
        return seconds, mem.peak, subprocess.CompletedProcess(list(cmd), proc.returncode, _tail(out), _tail(err))


def table(rows: list[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table. columns: (key, header, format spec such as '>10.1f')."""
    widths = []
    for key, header, spec in columns:
        cells = [format(r[key], spec) if r.get(key) is not None else "-" for r in rows]
        widths.append(max([len(header)] + [len(c) for c in cells]))
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, ((_, h, _), w) in enumerate(zip(columns, widths)))]
    for r in rows:
        cells = []
        for i, ((key, _, spec), w) in enumerate(zip(columns, widths)):
            cell = format(r[key], spec) if r.get(key) is not None else "-"
            cells.append(cell.rjust(w) if i else cell.ljust(w))
        lines.append("  ".join(cells))
    return "\n".join(lines)


def dump_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True)


def read_once(paths: Sequence[str]) -> None:
    """Reads every file once, so that what reads them next finds them in the page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
