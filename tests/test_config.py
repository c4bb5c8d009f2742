"""QwenConfig: the long-context fields default off, round-trip, and bad values say what to fix."""

from __future__ import annotations

import pytest

from openqwen import QwenConfig, get_preset


def test_long_context_fields_default_off_and_round_trip():
    c = get_preset("nano-1m")
    assert (c.use_dynamic_ntk, c.use_logn_attn, c.window_sizes, c.attention_sinks, c.rope_scaling,
            c.rope_update) == (False, False, None, 0, None, "prefill")
    assert QwenConfig.from_dict(c.to_dict()) == c
    on = c.replace(use_dynamic_ntk=True, use_logn_attn=True, window_sizes=[128, 128, None, 512], attention_sinks=4,
                   rope_update="rotate")
    assert QwenConfig.from_dict(on.to_dict()) == on


@pytest.mark.parametrize("field,value,message", [
    ("window_sizes", [256, 256], "one entry per layer"),
    ("rope_scaling", {"rope_type": "ntk-by-parts"}, "not implemented"),
])
def test_bad_values_are_refused_everywhere_a_config_comes_from(field, value, message):
    with pytest.raises(ValueError, match=message):
        get_preset("nano-1m", **{field: value})  # a preset override (YAML, CLI)
    with pytest.raises(ValueError, match=message):  # a saved config dict
        QwenConfig.from_dict({**get_preset("nano-1m").to_dict(), field: value})
