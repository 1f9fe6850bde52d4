"""Output folders: a new session folder every time, never an old one."""

import datetime
import os

import pytest

from bn_keras.cli import common


def test_new_session_dir_never_reuses_a_folder(tmp_path, monkeypatch):
    moment = datetime.datetime(2025, 1, 2, 3, 4, 5)

    class FixedClock:
        @staticmethod
        def now():
            return moment

    monkeypatch.setattr(common.datetime, "datetime", FixedClock)
    first = common.new_session_dir(tmp_path / "runs", "compare-digits")
    (tmp_path / "runs" / "compare-digits-20250102-030405" / "x").write_text("")
    second = common.new_session_dir(tmp_path / "runs", "compare-digits")
    third = common.new_session_dir(tmp_path / "runs", "compare-digits")
    assert [os.path.basename(p) for p in (first, second, third)] == [
        "compare-digits-20250102-030405",
        "compare-digits-20250102-030405-2",
        "compare-digits-20250102-030405-3",
    ]
    assert os.listdir(first) == ["x"]
    assert os.listdir(second) == [] and os.listdir(third) == []


def test_new_session_dir_in_an_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(common.UsageError, match="cannot create the folder"):
        common.new_session_dir(blocker / "runs", "compare-digits")


def test_parse_names():
    assert common.parse_names(["a,b", " c ", "d,,"]) == ["a", "b", "c", "d"]
    assert common.parse_names(None) == []
