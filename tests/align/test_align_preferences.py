"""Preference JSONL: every accepted shape, and bad rows named by line or counted."""

from __future__ import annotations

import json

import pytest

from openqwen.align.preferences import PreferenceDataError, PreferencePair, read_preferences, write_preferences

USER = [{"role": "user", "content": "Hi?"}]


def _write(tmp_path, rows):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_every_shape_reads_to_the_same_pair(tmp_path):
    rows = [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},
        {"messages": USER, "chosen": "Hello!", "rejected": "Go away."},
        {"conversations": [{"from": "human", "value": "Hi?"}], "chosen": {"from": "gpt", "value": "Hello!"},
         "rejected": {"from": "gpt", "value": "Go away."}},
        {"prompt": USER, "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
        {"chosen": USER + [{"role": "assistant", "content": "Hello!"}],  # implicit prompt
         "rejected": USER + [{"role": "assistant", "content": "Go away."}]},
    ]
    pairs, report = read_preferences(_write(tmp_path, rows + [""]))
    assert pairs == [PreferencePair(USER, "Hello!", "Go away.")] * len(rows)
    assert (report.rows, report.skipped) == (len(rows), 0)


def test_system_and_margin_are_kept_and_round_trip(tmp_path):
    row = {"conversations": [{"from": "user", "value": "Hi?"}], "system": "Be kind.", "chosen": "Hello!",
           "rejected": "No.", "margin": 2}
    pairs, _ = read_preferences(_write(tmp_path, [row]))
    assert pairs[0].messages == [{"role": "system", "content": "Be kind."}] + USER and pairs[0].margin == 2.0
    again, _ = read_preferences(write_preferences(pairs, tmp_path / "out.jsonl"))
    assert again == pairs


@pytest.mark.parametrize("row, reason", [
    ("{not json", "not valid JSON"),
    ({"prompt": "Hi?", "chosen": "a"}, "missing rejected"),
    ({"prompt": "Hi?", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "Hi?", "chosen": "", "rejected": "b"}, "non-empty"),
    ({"chosen": "a", "rejected": "b"}, "no prompt"),
    ({"prompt": "Hi?", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "end with an assistant"),
    ({"messages": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, "unknown role"),
    ({"prompt": "Hi?", "chosen": "a", "rejected": "b", "margin": "big"}, "margin must be a number"),
    ({"prompt": USER, "chosen": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "a"}],
      "rejected": "b"}, "differ from the prompt"),
])
def test_a_bad_row_names_its_line(tmp_path, row, reason):
    path = _write(tmp_path, [{"prompt": "Hi?", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(PreferenceDataError, match=reason) as e:
        read_preferences(path)
    assert f"{path}:2:" in str(e.value) and "--skip-bad" in str(e.value)


def test_skip_bad_counts_and_reports(tmp_path):
    good = {"prompt": "Hi?", "chosen": "a", "rejected": "b"}
    path = _write(tmp_path, [good, "{oops", {"prompt": "x", "chosen": "c", "rejected": "c"}, good])
    pairs, report = read_preferences(path, skip_bad=True)
    assert len(pairs) == 2 and (report.rows, report.skipped) == (4, 2)
    assert f"{path}:2" in str(report) and f"{path}:3" in str(report)
    with pytest.raises(PreferenceDataError, match="no usable"):
        read_preferences(_write(tmp_path, ["{oops"]), skip_bad=True)
    with pytest.raises(FileNotFoundError):
        read_preferences(tmp_path / "missing.jsonl")
