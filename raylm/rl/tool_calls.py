"""Tool calls inside RL rollouts: a sample pauses at <|/tool_call|>, the tool runs, the sample goes on.

    groups = generate_with_tools(engine, chat, prompts, [task_tools(t) for t in tasks], n=8,
                                 temperature=1.0, max_new_tokens=64, seed=0, max_rounds=2)
    groups[i][j].ids    # sampled tokens and the tool results spliced in, in order
    groups[i][j].mask   # 1 for a token the policy sampled, 0 for a tool result's token

This is what `raylm serve` and the eval do between generation rounds
(raylm/tools/runner.py), applied to every sample of every group: the engine
stops a sample at <|im_end|> or <|/tool_call|>; for each sample that stopped at a
call (and has rounds left) the call is parsed, the tool is run on this actor, its
`<|tool_result|>...<|/tool_result|>` tokens are appended, and all paused samples
continue together in one more engine call (n=1 each, their own context as the
prompt). The result's tokens are the environment's, not the policy's: their mask
is 0, so the learner's policy loss skips them (raylm/rl/learner.py: collate).

A prompt's tools are described by plain data (`task_tools`) so they travel to the
rollout actors: the calculator, and search over the task's own documents, as the
eval gives every task. `max_new_tokens` counts sampled tokens only.
"""

from __future__ import annotations

from raylm.tools.runner import last_call, run_tool


def task_tools(task) -> dict:
    """What a rollout actor needs to build the task's tools: its search documents."""
    return {"documents": dict(task.documents)}


def build_tools(spec: dict) -> dict:
    from raylm.tasks.knowledge import search_documents
    from raylm.tools.calculator import calculate

    documents = spec.get("documents", {})
    return {"calculator": calculate, "search": lambda query: search_documents(documents, query)}


def generate_with_tools(engine, chat, prompts: list[list[int]], tools: list[dict], n: int, temperature: float,
                        max_new_tokens: int, seed: int | None, max_rounds: int, max_len: int) -> list[list]:
    """`engine.generate`'s groups of Samples, with tool calls run and continued up to `max_rounds` per sample.

    `engine` must stop at chat.call_end as well as at <|im_end|>; `max_len`: the engine's context length."""
    groups = engine.generate(prompts, n, temperature, max_new_tokens, seed)
    built = [build_tools(spec) for spec in tools]
    samples = [(i, s) for i, group in enumerate(groups) for s in group]
    for s in (s for _, s in samples):
        s.mask = [1] * len(s.ids)
    for round_ in range(max_rounds):
        paused = []
        for i, s in samples:
            if not (s.ids and s.ids[-1] == chat.call_end):
                continue
            name, argument = last_call(chat, s.ids)
            result = chat.tool_result(run_tool(built[i], name, argument))
            s.ids, s.logprobs, s.mask = s.ids + result, s.logprobs + [0.0] * len(result), s.mask + [0] * len(result)
            s.finished = False
            budget = min(max_new_tokens - sum(s.mask), max_len - len(prompts[i]) - len(s.ids))
            if budget > 0:
                paused.append((i, s, budget))
        if not paused:
            break
        more = engine.generate([prompts[i] + s.ids for i, s, _ in paused], 1, temperature,
                               max(b for _, _, b in paused), None if seed is None else seed + 7919 * (round_ + 1))
        for (_, s, budget), (cont,) in zip(paused, more):
            ids = cont.ids[:budget]
            s.ids, s.logprobs, s.mask = s.ids + ids, s.logprobs + cont.logprobs[:budget], s.mask + [1] * len(ids)
            s.finished = len(ids) == len(cont.ids) and cont.finished
    for _, s in samples:  # a call left unanswered (no rounds left) did not end the turn
        if s.ids and s.ids[-1] == chat.call_end:
            s.finished = False
    return groups
