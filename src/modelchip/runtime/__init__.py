"""The portable runtime: a backend contract with a pure-PyTorch reference, model families, loaders, LLM."""
