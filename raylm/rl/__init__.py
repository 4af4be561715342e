"""RL on verifiable tasks: rollout engines (vLLM or torch) as Ray actors, GRPO losses, a learner actor, the driver."""
