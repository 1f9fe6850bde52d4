"""examples/placement_search.py runs in quick mode and reports its trials."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "placement_search.py"


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_placement_search_quick(tmp_path):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "tensorflow"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(REPO), env.get("PYTHONPATH", "")] if p
    )
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    printed = completed.stdout
    assert "Slots searched: ['conv_1', 'conv_2', 'dense', 'logits']" in printed
    assert "Batch normalization placements" in printed
    assert "2 completed trial(s), best first" in printed

    rows = json.loads((out / "report.json").read_text())
    assert [row["rank"] for row in rows] == [1, 2]
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True)  # val_accuracy: highest
    assert all(0.0 <= s <= 1.0 for s in scores)
    for row in rows:
        assert set(row["slots"]) == {"conv_1", "conv_2", "dense", "logits"}
        for info in row["slots"].values():
            assert info["placement"] in {
                "layer-bn-act",
                "layer-act-bn",
                "bn-act-layer",
                "layer-act",
            }
            assert info.get("normalization") in {None, "batch", "ghost"}
        assert f"trial_{row['trial_id']}-" in printed
        # Each trial's TensorBoard runs in its own folder, named by its id
        # and what it tried.
        assert row["run_name"].startswith(f"trial_{row['trial_id']}-")
        run = out / "logs" / row["run_name"]
        for name in ("train", "validation"):
            assert (run / name).is_dir(), name
        assert [p for p in run.iterdir() if p.name.startswith("events.out")]
    # Nothing else at the root.
    runs = sorted(p.name for p in (out / "logs").iterdir() if p.is_dir())
    assert runs == sorted(row["run_name"] for row in rows)
