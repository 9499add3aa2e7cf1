"""The train stage: TRL SFT with PEFT LoRA, launched by accelerate, resumable."""
