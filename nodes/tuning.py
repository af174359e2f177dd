"""One-shot tuning of a UNet3D on one clip (Tune-A-Video, DreamBooth) as a LoRA, without touching the model.

Tune-A-Video fine-tunes a text-to-video model on the single clip it is about to edit, so that DDIM inversion
and re-generation under an edited prompt keep that clip's motion. Here the trained weights are a LoRA on
the modules Tune-A-Video trains (see :data:`DEFAULT_TARGETS`), so the result is small, cacheable and
applied with the ordinary LoRA loader.

How the base model stays untouched: training runs on a **detached shallow copy** (:func:`training_copy`):
every module is a new object, every parameter a new ``requires_grad=False`` tensor sharing the original's
storage. Forward hooks on the copy's targeted ``Linear`` layers add ``scale * up(down(x))`` (PEFT's unmerged
LoRA); only ``down``/``up`` receive gradients, and nothing is ever written to the shared storage, so the
loaded model (shared by every branch and run) stays bit-identical, ``.grad`` and flags included.

The objective is the standard DDPM one, as Tune-A-Video's ``train_tuneavideo.py``: per step a seeded
timestep ``t ~ U{0, T-1}`` and noise ``n ~ N(0, I)``; ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) n``; mean squared
error between the UNet's prediction and the target of the scheduler's ``prediction_type`` (``n`` for
epsilon, the velocity for v-prediction, ``x0`` for sample); AdamW; gradient-norm clipping at 1. Every random
number comes from one CPU generator seeded with ``seed``, so on the CPU a seed gives the same adapter.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .lora import LoraAdapter, LoraWeights, _shallow
from .values import Scheduler, UNet3D

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_TARGETS",
    "LoraTrainer",
    "TuneSettings",
    "TuningError",
    "denoising_loss",
    "match_targets",
    "training_copy",
]

#: What Tune-A-Video trains, as module-name globs on ``UNet3DConditionModel``: the spatial self-attention
#: and cross-attention query projections (``attn1.to_q``, ``attn2.to_q``) and the whole temporal attention
#: (every projection of ``temp_attentions`` and of ``transformer_in``, the temporal transformer at the input).
DEFAULT_TARGETS: tuple[str, ...] = (
    "*.attentions.*.attn1.to_q",
    "*.attentions.*.attn2.to_q",
    "*temp_attentions.*.to_*",
    "transformer_in.*.to_*",
)

#: Sub-modules recomputed in the backward pass under ``gradient_checkpointing`` (diffusers' UNet3D has no
#: checkpointing of its own: ``_supports_gradient_checkpointing`` is False and its 3D blocks ignore the flag).
_CHECKPOINTED = ("resnets", "temp_convs", "attentions", "temp_attentions")


class TuningError(ValueError):
    """Tuning cannot go on; ``input`` names the node input to change."""

    def __init__(self, message: str, input: str | None = None) -> None:
        self.input = input
        super().__init__(message)


@dataclass(frozen=True)
class TuneSettings:
    """What one tuning run does; the node's inputs of the same names (see ``tune_video``)."""

    steps: int = 300
    learning_rate: float = 1e-4
    rank: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    seed: int = 0
    batch_frames: int | None = None
    gradient_checkpointing: bool = False
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0

    @property
    def lora_alpha(self) -> float:
        """``alpha``, defaulting to the rank (a LoRA scale ``alpha / rank`` of 1)."""
        return float(self.rank if self.alpha is None else self.alpha)


def _linear_layers(model: Any) -> dict[str, Any]:
    """Every ``torch.nn.Linear`` of ``model`` by dotted name."""
    import torch

    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def match_targets(model: Any, patterns: Iterable[str]) -> list[str]:
    """Names of the ``Linear`` layers whose full dotted name matches any glob in ``patterns`` (``*`` spans
    dots; ``fnmatch`` syntax), sorted. Raises ``TuningError`` (input ``targets``) naming every pattern that
    matches no linear layer, so a typo cannot silently train nothing."""
    patterns = list(patterns)
    if not patterns:
        raise TuningError("targets is empty: give at least one module-name pattern", input="targets")
    names = sorted(_linear_layers(model))
    if not names:
        raise TuningError("the UNet3D has no linear layer to adapt", input="unet")
    matched: set[str] = set()
    unmatched: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            unmatched.append(pattern)
        matched.update(hits)
    if unmatched:
        raise TuningError(f"{len(unmatched)} target pattern(s) match no linear layer of the UNet3D: "
                          f"{', '.join(map(repr, unmatched))} (layer names look like {names[0]!r})", input="targets")
    return sorted(matched)


def training_copy(model: Any) -> Any:
    """A copy of ``model`` safe to train adapters on: every module a new object (so hooks, flags and
    checkpointing set on it stay on it), every parameter a ``requires_grad=False`` alias of the original's
    storage (no memory copied, no gradient reaching the original), buffers shared. Tied modules stay tied."""
    import torch

    memo: dict[int, Any] = {}

    def clone(module: Any) -> Any:
        if id(module) in memo:
            return memo[id(module)]
        copy_ = memo[id(module)] = _shallow(module)
        for name, child in module._modules.items():
            copy_._modules[name] = None if child is None else clone(child)
        for name, param in module._parameters.items():
            if param is not None:
                copy_._parameters[name] = torch.nn.Parameter(param.detach(), requires_grad=False)
        return copy_

    return clone(model)


def _lora_hook(down: torch.Tensor, up: torch.Tensor, scale: float) -> Any:
    """A forward hook adding ``scale * up(down(x))`` to a ``Linear``'s output (computed in the LoRA's dtype)."""
    import torch.nn.functional as F

    def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0].to(down.dtype)
        return output + (scale * F.linear(F.linear(x, down), up)).to(output.dtype)

    return hook


def _checkpointed(forward: Any) -> Any:
    """``forward`` recomputed in the backward pass instead of keeping its activations (non-reentrant)."""
    from torch.utils.checkpoint import checkpoint

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def _enable_checkpointing(model: Any) -> int:
    """Checkpoint every resnet, temporal conv and (temporal) attention layer of a training copy, plus
    ``transformer_in``; returns how many. Only the copy's modules change (their ``forward`` attribute)."""
    count = 0
    for name, module in model.named_modules():
        parts = name.split(".")
        inside_list = len(parts) >= 2 and parts[-2] in _CHECKPOINTED and parts[-1].isdigit()
        if inside_list or name == "transformer_in":
            module.forward = _checkpointed(module.forward)
            count += 1
    return count


def _noise_tables(scheduler: Scheduler) -> Any:
    """The DDPM scheduler (``add_noise``, ``get_velocity``, ``alphas_cumprod``) for the model's betas."""
    from diffusers import DDPMScheduler

    config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    return DDPMScheduler.from_config(config)


def _target(ddpm: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict for ``x_t`` under the scheduler's ``prediction_type``."""
    kind = ddpm.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return ddpm.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise TuningError(f"unsupported prediction_type {kind!r} in the model's scheduler config", input="unet")


def _unet_loss(module: Any, ddpm: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
               embeds: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the UNet's prediction on ``x0`` noised with ``noise`` to timesteps ``t``."""
    import torch.nn.functional as F

    noisy = ddpm.add_noise(x0, noise, t)
    pred = module(noisy, t, encoder_hidden_states=embeds, return_dict=False)[0]
    return F.mse_loss(pred.float(), _target(ddpm, x0, noise, t).float())


def denoising_loss(unet: UNet3D, scheduler: Scheduler, latents: torch.Tensor, embeds: torch.Tensor,
                   noises: Sequence[torch.Tensor], timesteps: Sequence[int]) -> float:
    """The mean DDPM loss of ``unet`` on clean ``latents`` ``[1, C, F, h, w]`` over fixed ``(noise, t)`` pairs,
    without gradients: how well a model reproduces a clip (lower is better). Used to compare a tuned model
    with its base at identical noise and timesteps."""
    import torch

    module = unet.module
    param = next(module.parameters())
    ddpm = _noise_tables(scheduler)
    x0 = latents.to(device=param.device, dtype=param.dtype)
    cond = embeds.to(device=param.device, dtype=param.dtype)
    total = 0.0
    with torch.no_grad():
        for noise, t in zip(noises, timesteps, strict=True):
            ts = torch.tensor([int(t)], device=param.device)
            total += float(_unet_loss(module, ddpm, x0, noise.to(x0), ts, cond))
    return total / len(noises)


class LoraTrainer:
    """Trains a LoRA on a UNet3D to reproduce one clip under its caption, one step per :meth:`step` call.

    The caller drives the loop (progress, interruption) and may take :meth:`adapter` after any completed
    step: the adapter always reflects the last completed optimiser step.
    """

    def __init__(self, unet: UNet3D, scheduler: Scheduler, latents: torch.Tensor, embeds: torch.Tensor,
                 settings: TuneSettings) -> None:
        """Prepare the training copy, the seeded LoRA matrices (down uniform as PEFT's Kaiming init, up zero,
        so step 0 is the base model exactly) and AdamW. ``latents`` are ``[1, C, F, h, w]`` (scaled, as
        ``vae_encode`` gives them); ``embeds`` the caption's ``[1, L, D]`` text embeddings."""
        import torch

        if latents.ndim != 5 or latents.shape[0] != 1:
            raise TuningError(f"latents must be [1, C, F, h, w], got shape {tuple(latents.shape)}", input="latents")
        channels = int(unet.module.config.in_channels)
        if int(latents.shape[1]) != channels:
            raise TuningError(f"the UNet takes {channels} latent channels, the latents have {latents.shape[1]}",
                              input="latents")
        self.settings = settings
        self.names = match_targets(unet.module, settings.targets)
        param = next(unet.module.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.latents = latents.detach().to(device=self.device, dtype=self.dtype)
        self.embeds = embeds.detach().to(device=self.device, dtype=self.dtype)
        self.frames = int(latents.shape[2])
        self.window = min(settings.batch_frames or self.frames, self.frames)
        self.ddpm = _noise_tables(scheduler)
        self.num_train_timesteps = int(self.ddpm.config.num_train_timesteps)
        self.generator = torch.Generator("cpu").manual_seed(int(settings.seed))
        self.model = training_copy(unet.module)
        if settings.gradient_checkpointing:
            _enable_checkpointing(self.model)
        layers = _linear_layers(self.model)
        scale = settings.lora_alpha / settings.rank
        self.down: dict[str, torch.nn.Parameter] = {}
        self.up: dict[str, torch.nn.Parameter] = {}
        for name in self.names:
            layer = layers[name]
            bound = 1.0 / math.sqrt(layer.in_features)
            down = (torch.rand(settings.rank, layer.in_features, generator=self.generator) * 2 - 1) * bound
            self.down[name] = torch.nn.Parameter(down.to(self.device))
            self.up[name] = torch.nn.Parameter(torch.zeros(layer.out_features, settings.rank, device=self.device))
            layer.register_forward_hook(_lora_hook(self.down[name], self.up[name], scale))
        self.params = [p for name in self.names for p in (self.down[name], self.up[name])]
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.learning_rate,
                                           weight_decay=settings.weight_decay)
        self.steps_done = 0
        self.losses: list[float] = []

    def _sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's frame window, noise and timestep, drawn in a fixed order from the seeded generator."""
        import torch

        start = 0
        if self.frames > self.window:
            start = int(torch.randint(0, self.frames - self.window + 1, (1,), generator=self.generator))
        x0 = self.latents[:, :, start:start + self.window]
        noise = torch.randn(tuple(x0.shape), generator=self.generator, dtype=torch.float32)
        t = torch.randint(0, self.num_train_timesteps, (1,), generator=self.generator)
        return x0, noise.to(device=self.device, dtype=self.dtype), t.to(self.device)

    def step(self) -> float:
        """One optimiser step; returns its loss. A non-finite loss raises ``TuningError`` (input
        ``learning_rate``) before anything is updated, so the adapter stays the last good one."""
        import torch

        x0, noise, t = self._sample()
        with torch.enable_grad():
            loss = _unet_loss(self.model, self.ddpm, x0, noise, t, self.embeds)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TuningError(f"the loss became {value} at step {self.steps_done + 1}; lower the learning rate "
                                  f"(now {self.settings.learning_rate:g})", input="learning_rate")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.steps_done += 1
        self.losses.append(value)
        return value

    def adapter(self, name: str, info: dict[str, Any] | None = None) -> LoraAdapter:
        """The LoRA after the last completed step (float32 CPU copies), with ``info`` plus the run's
        ``steps_done`` and per-step ``losses`` as provenance."""
        alpha = self.settings.lora_alpha
        layers = {name_: LoraWeights(down=self.down[name_].detach().float().cpu().clone(),
                                     up=self.up[name_].detach().float().cpu().clone(), alpha=alpha)
                  for name_ in self.names}
        meta = {**(info or {}), "steps_done": self.steps_done, "losses": list(self.losses)}
        return LoraAdapter(layers={"unet": layers}, name=name, info=meta)
