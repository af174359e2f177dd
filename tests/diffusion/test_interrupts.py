"""An interrupt lands inside one long model call (a UNet3D forward), not only at the next progress tick."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from reelgraph import RunInterrupted
from reelgraph.context import RunContext, running
from reelgraph.nodes.interrupts import install_interrupt_hook
from reelgraph.nodes.model_loading import load_model


def test_a_stop_request_ends_a_unet_call_within_one_layer(tmp_path: Path) -> None:
    install_interrupt_hook()
    unet = load_model("builtin:tiny-random", device="cpu")[0].module
    calls: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: calls.append(name))
             for name, m in unet.named_modules() if name]
    flag = threading.Event()
    ctx = RunContext("denoise", "unet3d_denoise", tmp_path, tmp_path, None, tmp_path, _interrupt=flag)
    x = torch.randn(1, unet.config.in_channels, 2, 8, 8)
    states = torch.randn(1, 4, unet.config.cross_attention_dim)
    try:
        with torch.inference_mode(), running(ctx):
            unet(x, 10, encoder_hidden_states=states)
            whole = len(calls)
            calls.clear()
            flag.set()
            with pytest.raises(RunInterrupted):
                unet(x, 10, encoder_hidden_states=states)
    finally:
        for h in hooks:
            h.remove()
    assert whole > 20 and len(calls) <= 1  # stopped before the first layer ran
    unet(x, 10, encoder_hidden_states=states)  # outside a node the hook does nothing
