"""Trainers of the editor: Stage I LoRA SFT (``sft``) and Stage II Pref-GRPO (``rl``, its data filter in
``rl_data``), on one shared run setup (``training_run``: accelerator, pipeline with its LoRA adapter,
optimizer, resume, metrics, checkpoints in ``checkpoints``).

They build prompts, sizes and latents with the very code the editor serves with (``TaskRegistry``,
``to_model_size``, ``BatchedSampler``), so training and serving cannot drift apart.
"""
