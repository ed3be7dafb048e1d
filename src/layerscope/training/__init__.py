"""Putting a ranking to use: choosing modules from it, fine-tuning only those (LoRA or full), measuring
what that saves, and exporting the choice as peft / axolotl / LLaMA-Factory configs."""
