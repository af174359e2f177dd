"""AnimateDiff: Stable Diffusion 1.5 UNets inflated with motion modules (diffusers ``UNetMotionModel``).

This subpackage holds what ``load_model`` needs for that family beyond the ModelScope UNet3D one:

* ``tiny``: ``builtin:tiny-animatediff``, a small random AnimateDiff model built from fixed configs and a seed.
* ``motion_files``: motion modules as the AnimateDiff project ships them (``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``,
  their ``.safetensors`` twins): key renames to diffusers' ``MotionAdapter`` and the adapter config their shapes
  imply.
* ``ldm_files``: single-file Stable Diffusion 1.5 checkpoints in the original LDM key layout
  (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``).
* ``sd15``: the shipped SD 1.5 configs and CLIP's BPE vocabulary (package data), so nothing is downloaded.
"""
