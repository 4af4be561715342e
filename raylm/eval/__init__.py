"""Evaluation: capability probes on generated held-out tasks, val bits per byte, reports and charts."""
