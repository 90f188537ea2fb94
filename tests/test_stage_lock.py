"""spuraug.ddb.artifacts.one_process_at_a_time: two DDB runs that need the same stage folder
(the inversion, shared by every seed) compute it once; the other waits and reuses it."""

from __future__ import annotations

import threading
import time

from spuraug.ddb.artifacts import Artifact, one_process_at_a_time


class _Stage:
    """A pipeline-like object with one stage, as DDBPipeline's stage methods are written: return
    the folder when done, else compute it (slowly) and finish it."""

    def __init__(self, root, computed: list):
        self.root, self.computed = root, computed

    def invert_artifact(self) -> Artifact:
        return Artifact(self.root, "invert", {"tokens": ["<class-0>"]})

    @one_process_at_a_time("invert_artifact")
    def invert(self) -> str:
        art = self.invert_artifact()
        if art.done:
            return "reused"
        art.prepare()
        (art.path / "embeds.bin").write_bytes(b"x" * 8)
        time.sleep(0.5)  # long enough for the other caller to arrive meanwhile
        self.computed.append(threading.current_thread().name)
        art.finish({"wall_time_s": 0.5})
        return "computed"


def test_a_shared_stage_is_computed_once_while_the_other_waits(tmp_path):
    computed: list = []
    results: dict = {}

    def call(name):
        results[name] = _Stage(tmp_path, computed).invert()  # separate objects, separate locks: as two processes

    threads = [threading.Thread(target=call, args=(n,), name=n) for n in ("a", "b")]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=30)
    assert sorted(results.values()) == ["computed", "reused"] and len(computed) == 1
    assert (tmp_path / f".invert-{_Stage(tmp_path, []).invert_artifact().key}.lock").exists()
    assert _Stage(tmp_path, computed).invert() == "reused" and len(computed) == 1  # done: no lock taken
