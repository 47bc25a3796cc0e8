"""The OpenAI-compatible server (`modelchip serve`): FastAPI routes over the engine's background thread."""
