"""Evaluation: multiple-choice benchmarks, perplexity, generation scored against references, the harness bridge."""
