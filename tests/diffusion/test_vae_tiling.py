"""Tiled VAE encode/decode: exact for a local VAE, close to untiled for a real one, located setting errors.

Tolerance. Tiling cannot be exact for ``AutoencoderKL``: its group normalisation and mid-block attention
compute statistics over the whole frame, and a tile only sees itself. On ``builtin:tiny`` (random weights)
decoding N(0, 1) latents (the scale of real scaled latents) at 128x128 px with 64 px tiles and 32 px
overlap measured a mean absolute difference of 0.015 and a maximum of 0.16 on [0, 1] pixels; the test
asserts mean <= 0.025 and max <= 0.25, and two relative bars that do not depend on those weights: the
overlap at least halves the worst seam error of butted tiles, and at 25 % overlap the result is at least
as close to untiled as diffusers' own ``AutoencoderKL`` tiling with the same tile size. With a VAE that is
local (no global statistics) tiling must be exact up to float rounding: asserted <= 1e-6.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from reelgraph import NodeInputError
from reelgraph.nodes import sampling
from reelgraph.nodes.diffusion_nodes import vae_decode, vae_encode
from reelgraph.nodes.vae_tiling import latent_tiles, tile_spans, tiled_vae_decode, tiled_vae_encode
from reelgraph.nodes.values import VAE, Latents, Video

torch = pytest.importorskip("torch")
for _name in ("diffusers", "transformers", "safetensors"):
    pytest.importorskip(_name)

CTX = SimpleNamespace(progress=lambda i, n: None, check_memory=lambda nbytes, what, input=None: None)


class LocalVAE(torch.nn.Module):
    """A stand-in VAE (factor 4) whose output pixels depend only on their own latent: nearest upsampling and
    a 1x1 convolution to decode, a 1x1 convolution and 4x4 average pooling to encode."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=[8, 8, 8], latent_channels=4, out_channels=3,
                                      scaling_factor=0.5)
        self.to_pixels = torch.nn.Conv2d(4, 3, 1)
        self.to_latents = torch.nn.Conv2d(3, 4, 1)

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        up = torch.nn.functional.interpolate(z, scale_factor=4, mode="nearest")
        return SimpleNamespace(sample=torch.tanh(self.to_pixels(up)))

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        mean = torch.nn.functional.avg_pool2d(self.to_latents(x), 4)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean))


def test_tile_spans_cover_with_overlap() -> None:
    assert tile_spans(10, 16, 4) == [(0, 10)]
    assert tile_spans(16, 16, 4) == [(0, 16)]
    for length, tile, overlap in [(32, 16, 8), (33, 16, 4), (100, 24, 0), (17, 8, 7)]:
        spans = tile_spans(length, tile, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(b - a == tile for a, b in spans)
        assert all(prev[1] - nxt[0] >= overlap for prev, nxt in itertools.pairwise(spans))
    with pytest.raises(ValueError):
        tile_spans(32, 8, 8)


def test_latent_tiles_checks_settings() -> None:
    assert latent_tiles(8, 512, 64) == (64, 8)
    for args, name in [((8, 500, 64), "tile_size"), ((8, 512, 60), "tile_overlap"), ((8, 64, 64), "tile_overlap")]:
        with pytest.raises(ValueError) as info:
            latent_tiles(*args)
        assert info.value.input == name


@pytest.mark.parametrize(("tile", "overlap"), [(16, 0), (16, 8), (24, 8), (32, 12), (200, 32)])
def test_tiling_is_exact_for_a_local_vae(tile: int, overlap: int) -> None:
    torch.manual_seed(0)
    vae = VAE(LocalVAE(), "local")
    latents = Latents(torch.randn(1, 4, 5, 13, 22))
    whole = sampling.vae_decode(vae, latents, chunk_frames=5, fps=6)
    ticks: list[tuple[int, int]] = []
    tiled = tiled_vae_decode(vae, latents, tile, overlap, chunk_frames=2, fps=6,
                             progress=lambda i, n: ticks.append((i, n)))
    assert tiled.frames.shape == whole.frames.shape == (5, 3, 52, 88) and tiled.fps == 6
    assert (tiled.frames - whole.frames).abs().max().item() <= 1e-6
    assert ticks[-1][0] == ticks[-1][1] == len(ticks)
    video = Video(torch.rand(3, 3, 52, 88, generator=torch.Generator().manual_seed(1)))
    encoded = tiled_vae_encode(vae, video, tile, overlap, chunk_frames=2).tensor
    assert (encoded - sampling.vae_encode(vae, video).tensor).abs().max().item() <= 1e-6


def test_tiled_decode_is_close_to_untiled_on_the_tiny_model(tiny) -> None:
    _, vae, _, _ = tiny
    latents = Latents(torch.randn(1, 4, 2, 32, 32, generator=torch.Generator().manual_seed(0)))
    whole = sampling.vae_decode(vae, latents).frames
    diff = (tiled_vae_decode(vae, latents, 64, 32).frames - whole).abs()
    butted = (tiled_vae_decode(vae, latents, 64, 0).frames - whole).abs()
    print(f"tiled vs untiled decode, 128 px, tile 64/overlap 32: mean {diff.mean():.4f}, max {diff.max():.4f}; "
          f"no overlap: max {butted.max():.4f}")
    assert diff.mean().item() <= 0.025 and diff.max().item() <= 0.25
    assert diff.max().item() <= 0.5 * butted.max().item()
    assert torch.equal(tiled_vae_decode(vae, latents, 128, 32).frames, whole)  # one tile is the whole frame


def test_no_worse_than_diffusers_tiling(tiny) -> None:
    _, vae, _, _ = tiny
    module = vae.module
    if not all(hasattr(module, a) for a in ("tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")):
        pytest.skip("this diffusers version names its tiling settings differently")
    latents = torch.randn(1, 4, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    whole = sampling.vae_decode(vae, latents).frames
    saved = (module.tile_sample_min_size, module.tile_latent_min_size, module.tile_overlap_factor)
    module.enable_tiling()
    module.tile_sample_min_size, module.tile_latent_min_size, module.tile_overlap_factor = 64, 16, 0.25
    try:
        with torch.no_grad():
            theirs = (module.decode(latents[0].permute(1, 0, 2, 3) / vae.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1)
    finally:
        module.disable_tiling()
        module.tile_sample_min_size, module.tile_latent_min_size, module.tile_overlap_factor = saved
    ours = tiled_vae_decode(vae, latents, 64, 16).frames
    assert (ours - whole).abs().mean() <= (theirs - whole).abs().mean()


def test_nodes_take_tile_settings(tiny) -> None:
    _, vae, _, _ = tiny
    video = Video(torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2)), fps=5)
    latents = vae_encode(vae, video, CTX, tile_size=32, tile_overlap=8)
    assert torch.equal(latents.tensor, tiled_vae_encode(vae, video, 32, 8).tensor)
    assert torch.equal(vae_encode(vae, video, CTX).tensor, sampling.vae_encode(vae, video).tensor)
    decoded = vae_decode(vae, latents, CTX, fps=5, tile_size=32, tile_overlap=8)
    assert torch.equal(decoded.frames, tiled_vae_decode(vae, latents, 32, 8, fps=5).frames)
    for kwargs, name in [({"tile_size": 30}, "tile_size"), ({"tile_size": 32, "tile_overlap": 6}, "tile_overlap"),
                         ({"tile_size": 32, "tile_overlap": 32}, "tile_overlap")]:
        with pytest.raises(NodeInputError) as info:
            vae_decode(vae, latents, CTX, **kwargs)
        assert info.value.input == name
        with pytest.raises(NodeInputError) as info:
            vae_encode(vae, video, CTX, **kwargs)
        assert info.value.input == name
