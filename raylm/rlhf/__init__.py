"""RLHF: preference labels (labels.py, the labeling page label_app.py), reward models and RL against them."""
