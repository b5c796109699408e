"""TrainTrain: LoRA, iLECO and Difference training for Stable Diffusion, offline."""

__version__ = "0.1.0"
