"""Trainers of the editor: Stage I LoRA SFT (``sft``), with the pieces later stages reuse.

They build prompts, sizes and latents with the very code the editor serves with (``TaskRegistry``,
``to_model_size``, ``BatchedSampler``), so training and serving cannot drift apart.
"""
