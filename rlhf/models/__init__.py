"""Models and tokenizers: loading by hub id or path, tiny configs, scalar heads, generation and log-probs."""
