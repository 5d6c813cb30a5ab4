"""Models and tokenizers: load pretrained, or build from scratch."""
