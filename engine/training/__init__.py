"""Training a planned network: the fine-tune, distillation, its control, sensitivity, methods."""
