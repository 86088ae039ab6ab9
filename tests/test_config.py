"""config.merge_config_file: defaults <- config file <- flags typed on the command line (pure; no CLI, no models).

The CLI-level tests (a real --config file, exit 2 with the fix) are in test_cli.py; reading TOML is in
test_verdict.py (read_config_file).
"""

import pytest

from opd_probe.config import ProbeConfig, gate_statuses, merge_config_file
from opd_probe.errors import InputError

FLAGS = {"student": "S", "teachers": ("T",), "out": "o", "samples": 4, "top_k": 16, "limit": None}


def test_file_values_fill_in_what_was_not_typed():
    s = merge_config_file(FLAGS, {"samples"}, {"samples": 1, "top_k": 8, "limit": 2, "seed": 5}, "f.toml")
    assert s.values == {**FLAGS, "top_k": 8, "limit": 2, "seed": 5}  # samples was typed: the flag's 4 stays
    assert s.thresholds == {} and s.fail_on is None
    assert ProbeConfig(**s.values).seed == 5


def test_the_flags_dict_is_not_changed():
    flags = dict(FLAGS)
    merge_config_file(flags, set(), {"samples": 1}, "f.toml")
    assert flags == FLAGS


def test_lists_thresholds_and_fail_on():
    table = {"continuation_depths": [0, 256], "template": ["student", "teacher"], "thresholds": {"unsupported_nogo": 0.7},
             "fail_on": "caution"}
    s = merge_config_file(FLAGS, set(), table, "f.toml")
    assert s.values["continuation_depths"] == (0, 256) and s.values["template"] == ("student", "teacher")
    assert s.thresholds == {"unsupported_nogo": 0.7}
    assert s.fail_on == ("caution",)
    assert merge_config_file(FLAGS, set(), {"fail_on": ["no-go", "caution"]}, "f").fail_on == ("no-go", "caution")


def test_an_empty_table_changes_nothing():
    s = merge_config_file(FLAGS, set(), {}, None)
    assert (s.values, s.thresholds, s.fail_on) == (FLAGS, {}, None)


@pytest.mark.parametrize("table,needle,fix", [
    ({"sampels": 1}, "f.toml: unknown opd-probe config key(s): sampels", "allowed keys:"),
    ({"teachers": ["a"]}, "unknown opd-probe config key(s): teachers", "allowed keys:"),
    ({"resume": True}, "unknown opd-probe config key(s): resume", "allowed keys:"),
    ({"samples": [1, 2]}, "config key(s) samples must be plain values", "docs/ci.md"),
    ({"thresholds": 3}, "'thresholds' must be a table", "[tool.opd-probe.thresholds]"),
    ({"fail_on": 3}, "fail_on must be a status or a list of statuses", "fail_on = ["),
    ({"fail_on": ["go"]}, "unknown status go", "no-go and/or caution"),
])
def test_bad_tables_are_input_errors_with_the_fix(table, needle, fix):
    with pytest.raises(InputError) as e:
        merge_config_file(FLAGS, set(), table, "f.toml")
    assert needle in e.value.message and fix in e.value.fix


def test_gate_statuses():
    assert gate_statuses(["no-go", "caution"]) == ("no-go", "caution")
    assert gate_statuses([]) == ()
    with pytest.raises(InputError, match="unknown status go"):
        gate_statuses(["go"])
