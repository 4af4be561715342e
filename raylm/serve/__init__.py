"""Serving: the finished model behind an OpenAI-compatible endpoint on Ray Serve (see raylm/serve/app.py)."""
