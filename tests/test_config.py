"""QwenConfig: long-context fields that nothing implements yet are refused when set by hand."""

from __future__ import annotations

import pytest

from openqwen import QwenConfig, get_preset


@pytest.mark.parametrize("field,value", [("use_dynamic_ntk", True), ("use_logn_attn", True),
                                         ("window_sizes", [256, 256, 256, 256])])
def test_unimplemented_long_context_fields_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field}: not implemented yet"):
        QwenConfig(**{field: value})
    with pytest.raises(ValueError, match=f"{field}: not implemented yet"):  # a preset override (YAML, CLI)
        get_preset("nano-1m", **{field: value})
    with pytest.raises(ValueError, match=f"{field}: not implemented yet"):  # a saved config dict
        QwenConfig.from_dict({**QwenConfig().to_dict(), field: value})


def test_their_off_values_are_the_defaults_and_round_trip():
    c = get_preset("nano-1m")
    assert (c.use_dynamic_ntk, c.use_logn_attn, c.window_sizes) == (False, False, None)
    assert QwenConfig.from_dict(c.to_dict()) == c
