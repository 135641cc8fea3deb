"""The local preprocess run's malloc arena limit (preprocess/malloc_arenas.py)."""

from __future__ import annotations

import os
import subprocess
import sys

VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")
SHOW = "import os; print(*(os.environ.get(v) for v in %r))" % (VARIABLES,)
CHILD = ("import sys, subprocess; from detrec.preprocess import malloc_arenas; malloc_arenas.limit(); "
         f"{SHOW}; print(subprocess.run([sys.executable, '-c', {SHOW!r}], capture_output=True, text=True).stdout)")


def _run(**settings: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(settings)
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_the_limit_reaches_processes_started_after_it():
    assert _run() == ["2", "262144"] * 2  # this process, and a worker it starts


def test_a_users_own_setting_is_kept():
    assert _run(MALLOC_ARENA_MAX="8") == ["8", "262144"] * 2
    assert _run(MALLOC_MMAP_THRESHOLD_="65536") == ["2", "65536"] * 2


def test_preprocess_sets_it_before_its_workers_start(monkeypatch):
    """`detrec preprocess` calls limit() first thing (what its workers inherit): before it reads
    its flags, so before any Beam worker can start."""
    import pytest

    from detrec.pipelines import preprocess_cmd

    class FlagsRead(Exception):
        pass

    calls = []

    def flags(*args):
        calls.append("flags")
        raise FlagsRead

    monkeypatch.setattr(preprocess_cmd.malloc_arenas, "limit", lambda: calls.append("limit"))
    monkeypatch.setattr(preprocess_cmd, "parse_num_shards", flags)
    with pytest.raises(FlagsRead):
        preprocess_cmd.run(type("Args", (), {"splits": "train", "num_shards": "", "target_shard_mb": 128})(), [])
    assert calls == ["limit", "flags"]


def test_release_hands_back_what_a_thread_freed():
    """What a non-main thread freed stays in glibc's arena (the listing worker's case) until
    release() gives it back."""
    code = ("import threading; from detrec.preprocess import malloc_arenas\n"
            "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20\n"
            "def churn():\n"
            "    rows = [bytearray(600) for _ in range(300_000)]\n"  # > 512 B: malloc, not pymalloc
            "    keep = [bytearray(600) for _ in range(10)]\n"  # something allocated after, still alive
            "    del rows\n"
            "    churn.keep = keep\n"
            "base = rss(); t = threading.Thread(target=churn); t.start(); t.join()\n"
            "held = rss() - base; malloc_arenas.release(); print(held, rss() - base)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    held, after = map(int, done.stdout.split())
    assert held > 100 and after < held / 4, (held, after)
