"""One trainer for CogVideoX-family models; Transfer Pre-Training and Privacy-Preserving Fine-Tuning are configs."""
