"""AnimateDiff: Stable Diffusion 1.5 UNets inflated with motion modules (diffusers ``UNetMotionModel``).

This subpackage holds what ``load_model`` needs for that family beyond the ModelScope UNet3D one:

* ``tiny``: ``builtin:tiny-animatediff``, a small random AnimateDiff model built from fixed configs and a seed.
* ``motion_files``: motion modules as the AnimateDiff project ships them (``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``,
  their ``.safetensors`` twins): key renames to diffusers' ``MotionAdapter`` and the adapter config their shapes
  imply; what is not a motion module (LoRAs, ModelScope files, whole checkpoints).
* ``adapters``: the ``motion_adapter`` input (a ``MotionAdapter`` folder or a file) checked like a model folder,
  and the ``UNetMotionModel`` config of a Stable Diffusion UNet with an adapter inserted.
* ``ldm_files``: single-file Stable Diffusion 1.5 checkpoints in the original LDM key layout
  (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``), renamed with
  diffusers' converters.
* ``shipped``: the SD 1.5 configs and CLIP's BPE vocabulary shipped in ``sd15/`` (package data), so nothing is
  downloaded.
"""
