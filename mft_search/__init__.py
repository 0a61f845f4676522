"""mft_search: find the binary mask that makes a fine-tuned LLM better (Mask Fine-Tuning)."""

__version__ = "0.1.0"
