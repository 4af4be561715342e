"""Tools the assistant can call (search, calculator) and the loop that runs them during generation."""
