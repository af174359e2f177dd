"""Chunked VAE encode/decode: chunking must not change the result, sizes must fit the VAE factor."""

from __future__ import annotations

import pytest

from reelgraph.nodes.sampling import vae_decode, vae_encode
from reelgraph.nodes.values import Latents, Video

torch = pytest.importorskip("torch")
for _name in ("diffusers", "transformers", "safetensors"):
    pytest.importorskip(_name)


def test_chunked_equals_unchunked(tiny) -> None:
    _, vae, _, _ = tiny
    video = Video(torch.rand(7, 3, 16, 24, generator=torch.Generator().manual_seed(0)), fps=12)
    whole = vae_encode(vae, video, chunk_frames=7)
    for chunk in (1, 3):
        parts = vae_encode(vae, video, chunk_frames=chunk)
        assert (parts.tensor - whole.tensor).abs().max().item() <= 1e-5
    assert whole.tensor.shape == (1, 4, 7, 4, 6)
    decoded_whole = vae_decode(vae, whole, chunk_frames=7, fps=12)
    decoded_parts = vae_decode(vae, whole, chunk_frames=2, fps=12)
    diff = (decoded_whole.frames - decoded_parts.frames).abs().max().item()
    print(f"vae_decode chunked vs unchunked: max abs diff {diff:.3g}")
    assert diff <= 1e-5
    assert decoded_whole.frames.shape == (7, 3, 16, 24)
    assert decoded_whole.frames.dtype == torch.float32
    assert decoded_whole.fps == 12
    assert decoded_whole.frames.min() >= 0.0 and decoded_whole.frames.max() <= 1.0


def test_sampled_encode_does_not_depend_on_chunking(tiny) -> None:
    _, vae, _, _ = tiny
    video = Video(torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    a = vae_encode(vae, video, chunk_frames=5, generator=torch.Generator().manual_seed(3))
    b = vae_encode(vae, video, chunk_frames=2, generator=torch.Generator().manual_seed(3))
    mean = vae_encode(vae, video, chunk_frames=5)
    assert (a.tensor - b.tensor).abs().max().item() <= 1e-5
    assert not torch.allclose(a.tensor, mean.tensor)


def test_size_must_divide_by_vae_factor(tiny) -> None:
    _, vae, _, _ = tiny
    assert vae.scale_factor == 4
    with pytest.raises(ValueError, match="divisible by the VAE factor 4"):
        vae_encode(vae, Video(torch.rand(2, 3, 18, 16)), chunk_frames=2)
    with pytest.raises(ValueError, match="chunk_frames"):
        vae_encode(vae, Video(torch.rand(2, 3, 16, 16)), chunk_frames=0)
    with pytest.raises(ValueError, match=r"\[1, C, F, h, w\]"):
        vae_decode(vae, Latents(torch.zeros(2, 4, 2, 4, 4)))
    with pytest.raises(ValueError, match="latent channels"):
        vae_decode(vae, torch.zeros(1, 3, 2, 4, 4))
