"""Spatially tiled VAE encode/decode, so memory is bounded by the tile size rather than the frame size.

A frame is cut into a grid of overlapping tiles (in latent units: ``tile_size / f`` with ``f`` the VAE's
spatial factor, neighbours sharing ``tile_overlap / f``); the VAE runs on one tile of a chunk of frames at a
time, and the results are cross-faded where tiles overlap. Along each axis a tile's weight ramps linearly
from near 0 at an inner edge to 1 across the overlap (image borders get no ramp), and the weights are
normalised to sum to 1 at every position. The 2-D weight of a tile is the product of its two axis weights,
so normalising each axis on its own normalises the grid.

Tiling is an approximation: the VAE's group normalisation and its mid-block attention see one tile instead
of the whole frame, and a tile's border pixels lack context. The ramps hide the seams; the statistics
difference remains, which is why the tests bound the tiled/untiled difference instead of asserting
equality. Without tiles the results equal :mod:`reelgraph.nodes.sampling`'s ``vae_encode``/``vae_decode``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .values import VAE, Latents, Video

if TYPE_CHECKING:
    import torch

__all__ = ["TilingError", "latent_tiles", "tile_spans", "tiled_vae_decode", "tiled_vae_encode"]

ProgressFn = Callable[[int, int], None]


class TilingError(ValueError):
    """A tile setting that cannot work with this VAE; ``input`` names the offending setting."""

    def __init__(self, message: str, input: str) -> None:
        super().__init__(message)
        self.input = input


def latent_tiles(factor: int, tile_size: int, tile_overlap: int) -> tuple[int, int]:
    """Tile and overlap in latent units for pixel ``tile_size``/``tile_overlap`` and VAE ``factor``.

    Both must be multiples of ``factor`` and the overlap smaller than the tile; ``TilingError`` says which
    setting is wrong and suggests a value.
    """
    if tile_size < factor or tile_size % factor:
        fix = max(factor, tile_size // factor * factor)
        raise TilingError(f"tile_size={tile_size} must be a positive multiple of the VAE factor {factor}; "
                          f"try {fix}", "tile_size")
    if tile_overlap < 0 or tile_overlap % factor:
        raise TilingError(f"tile_overlap={tile_overlap} must be a multiple of the VAE factor {factor}; try "
                          f"{tile_overlap // factor * factor}", "tile_overlap")
    if tile_overlap >= tile_size:
        raise TilingError(f"tile_overlap={tile_overlap} must be smaller than tile_size={tile_size}; a quarter "
                          "of it is a good choice", "tile_overlap")
    return tile_size // factor, tile_overlap // factor


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of tiles of size ``tile`` covering ``[0, length)``, neighbours overlapping by at
    least ``overlap``; the last tile is moved back to end at ``length`` so every tile has full size."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [(0, length)]
    starts = [*range(0, length - tile, tile - overlap), length - tile]
    return [(s, s + tile) for s in starts]


def _axis_weights(spans: list[tuple[int, int]], length: int, overlap: int, scale: int) -> list[torch.Tensor]:
    """Each span's 1-D blending weights at output resolution (``scale`` output pixels per grid unit),
    normalised so that the weights of all spans sum to 1 at every position."""
    import torch

    ramp = max(overlap * scale, 1)
    raw = []
    total = torch.zeros(length * scale, dtype=torch.float32)
    for start, stop in spans:
        size = (stop - start) * scale
        pos = torch.arange(size, dtype=torch.float32) + 0.5
        weight = torch.ones(size, dtype=torch.float32)
        if start > 0:
            weight = torch.minimum(weight, pos / ramp)
        if stop < length:
            weight = torch.minimum(weight, (size - pos) / ramp)
        raw.append(weight)
        total[start * scale:stop * scale] += weight
    return [w / total[a * scale:b * scale] for w, (a, b) in zip(raw, spans, strict=True)]


def _blend(run: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, out: torch.Tensor,
           grid: tuple[int, int, int, int], scales: tuple[int, int], tick: Callable[[], None]) -> None:
    """Run ``run`` on every tile of ``source`` ``[n, C, H, W]`` and add the weighted results into ``out``.

    ``grid`` is (latent height, latent width, tile, overlap) in latent units; ``scales`` are the pixels per
    latent unit of the source and of the output (``(1, f)`` to decode, ``(f, 1)`` to encode).
    """
    height, width, tile, overlap = grid
    src_s, out_s = scales
    rows, cols = tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)
    row_w, col_w = _axis_weights(rows, height, overlap, out_s), _axis_weights(cols, width, overlap, out_s)
    for (y0, y1), wy in zip(rows, row_w, strict=True):
        for (x0, x1), wx in zip(cols, col_w, strict=True):
            piece = run(source[:, :, y0 * src_s:y1 * src_s, x0 * src_s:x1 * src_s]).float().cpu()
            out[:, :, y0 * out_s:y1 * out_s, x0 * out_s:x1 * out_s] += piece * (wy[:, None] * wx[None, :])
            tick()


def _device_dtype(module: Any) -> tuple[Any, Any]:
    param = next(module.parameters())
    return param.device, param.dtype


def _ticker(total: int, progress: ProgressFn | None) -> Callable[[], None]:
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    return tick


def _tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    return len(tile_spans(height, tile, overlap)) * len(tile_spans(width, tile, overlap))


def tiled_vae_decode(vae: VAE, latents: Latents | torch.Tensor, tile_size: int, tile_overlap: int = 32,
                     chunk_frames: int = 8, fps: float = 8.0, progress: ProgressFn | None = None) -> Video:
    """Decode scaled latents ``[1, C, F, h, w]`` into a ``Video`` tile by tile (``tile_size`` output pixels).

    Same contract as ``sampling.vae_decode``: divide by the scaling factor, decode, map to [0, 1] and clamp
    (after blending). Peak memory is the output plus the VAE's activations for ``chunk_frames`` frames of
    one tile. ``progress(tiles_done, tiles)`` is called after each tile of each chunk.
    """
    import torch

    from .sampling import decode_input

    tensor, n, h, w = decode_input(vae, latents)
    module = vae.module
    device, dtype = _device_dtype(module)
    factor = vae.scale_factor
    tile, overlap = latent_tiles(factor, tile_size, tile_overlap)
    chunk = max(1, int(chunk_frames))
    out = torch.zeros((n, int(module.config.out_channels), h * factor, w * factor), dtype=torch.float32)
    inv_scale = 1 / vae.scaling_factor
    tick = _ticker(-(-n // chunk) * _tile_count(h, w, tile, overlap), progress)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return module.decode(inv_scale * z).sample * 0.5 + 0.5

    with torch.inference_mode():
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            z = tensor[0, :, start:stop].permute(1, 0, 2, 3).to(device=device, dtype=dtype)
            _blend(decode, z, out[start:stop], (h, w, tile, overlap), (1, factor), tick)
            out[start:stop].clamp_(0, 1)
    return Video(frames=out, fps=fps)


def tiled_vae_encode(vae: VAE, video: Video, tile_size: int, tile_overlap: int = 32, chunk_frames: int = 8,
                     progress: ProgressFn | None = None) -> Latents:
    """Encode a ``Video`` into scaled latents ``[1, C, F, H/f, W/f]`` (the posterior mean), tile by tile.

    ``tile_size``/``tile_overlap`` are in input pixels. Same contract as ``sampling.vae_encode`` without a
    generator; ``progress(tiles_done, tiles)`` is called after each tile of each chunk.
    """
    import torch

    module = vae.module
    device, dtype = _device_dtype(module)
    n, _, height, width = (int(s) for s in video.frames.shape)
    factor = vae.scale_factor
    if height % factor or width % factor:
        raise ValueError(f"video size {height}x{width} must be divisible by the VAE factor {factor}; "
                         "resize or crop it first")
    tile, overlap = latent_tiles(factor, tile_size, tile_overlap)
    h, w = height // factor, width // factor
    chunk = max(1, int(chunk_frames))
    channels = int(module.config.latent_channels)
    out = torch.zeros((n, channels, h, w), dtype=torch.float32)
    tick = _ticker(-(-n // chunk) * _tile_count(h, w, tile, overlap), progress)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return module.encode(pixels).latent_dist.mean * vae.scaling_factor

    with torch.inference_mode():
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            pixels = video.frames[start:stop].to(device=device, dtype=dtype) * 2.0 - 1.0
            _blend(encode, pixels, out[start:stop], (h, w, tile, overlap), (factor, 1), tick)
    tensor = out.permute(1, 0, 2, 3).unsqueeze(0).to(device=device, dtype=dtype).contiguous()
    return Latents(tensor=tensor)
