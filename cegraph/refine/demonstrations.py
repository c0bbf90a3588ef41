"""Choosing the worked examples of an `add_demonstrations` edit.

A demonstration is a `shown` input the current version solves, with what the edited node
wrote for it in that passing run. Only the shown role is a pool: an input of the
verification role (or a holdout, never among a refinement's inputs) is never a
demonstration, whatever a proposer asks for, so a candidate cannot be judged on an input
it was shown the answer to. Among the pool, the inputs nearest the target mode's members
(cosine of input embeddings, the most similar member counting) come first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from cegraph.fss.signature import Embedder
from cegraph.refine.edits import AddDemonstrations, Demo, EditRejected
from cegraph.refine.proposer import Candidate, Invalid, Proposals
from cegraph.refine.splits import Role
from cegraph.task import Task
from cegraph.trace import Trace


def _written(trace: Trace, node: str) -> str | None:
    """What `node` wrote in a run: the code it ran if any, else its text output."""
    span = next((s for s in trace.spans if s.node_id == node and not s.error), None)
    if span is None or not span.outputs:
        return None
    if isinstance(code := span.outputs.get("code"), str) and code.strip():
        return f"```python\n{code.strip()}\n```"
    text = next((v for v in span.outputs.values() if isinstance(v, str) and v.strip()), None)
    return text.strip() if text else None


def pick_demonstrations(node: str, k: int, members: tuple[str, ...], *,
                        tasks: Mapping[str, Task], roles: Mapping[str, Role],
                        traces: Mapping[str, Trace], embedder: Embedder) -> tuple[Demo, ...]:
    """Up to `k` demonstrations for `node`: shown inputs solved by the current version
    (`traces`), nearest the mode's shown `members` first; ties by task id."""
    pool: list[tuple[str, str]] = []
    for tid in sorted(traces):
        trace = traces[tid]
        if roles.get(tid) != "shown" or tid in members or trace.outcome is None \
                or not trace.outcome.passed:
            continue
        if (written := _written(trace, node)) is not None:
            pool.append((tid, written))
    near = [tid for tid in members if roles.get(tid) == "shown" and tid in tasks]
    if not pool:
        return ()
    if near:
        vecs = embedder.embed([tasks[t].input for t in near] + [tasks[t].input for t, _ in pool])
        sim = (vecs[len(near):] @ vecs[:len(near)].T).max(axis=1)
        order = sorted(range(len(pool)), key=lambda i: (-float(np.round(sim[i], 6)), pool[i][0]))
    else:
        order = list(range(len(pool)))
    return tuple(Demo(task_id=pool[i][0], input=tasks[pool[i][0]].input[:4000],
                      output=pool[i][1][:4000]) for i in order[:k])


def demos_leak(edit: AddDemonstrations, tasks: Mapping[str, Task], roles: Mapping[str, Role]
               ) -> str | None:
    """Why an edit's demonstrations may not be shown (an input not of the shown role, or text
    that is not that input's), or None when every one is a shown input."""
    for d in edit.demos:
        if roles.get(d.task_id) != "shown":
            return (f"add_demonstrations: {d.task_id!r} is not a shown input; demonstrations "
                    "come from the shown role only")
        if tasks[d.task_id].input[:4000] != d.input:
            return f"add_demonstrations: the demonstration of {d.task_id!r} is not its input"
    return None


def with_demonstrations(edit: AddDemonstrations, members: tuple[str, ...], *,
                        tasks: Mapping[str, Task], roles: Mapping[str, Role],
                        traces: Mapping[str, Trace], embedder: Embedder) -> AddDemonstrations:
    """The edit with its demonstrations picked here, whatever a proposer wrote into it."""
    demos = pick_demonstrations(edit.node, edit.k, members, tasks=tasks, roles=roles,
                                traces=traces, embedder=embedder)
    if not demos:
        raise EditRejected("add_demonstrations: no shown input the current version solves")
    return edit.model_copy(update={"demos": demos})


def materialize(proposals: Proposals, members: tuple[str, ...], *, tasks: Mapping[str, Task],
                roles: Mapping[str, Role], traces: Mapping[str, Trace],
                embedder: Callable[[], Embedder]) -> Proposals:
    """`proposals` with every `add_demonstrations` candidate's examples picked here (from the
    shown role only, whatever its proposer wrote); one that finds none, or whose examples
    would show an input of another role, goes to `invalid` with the reason."""
    out = Proposals(invalid=list(proposals.invalid))
    for cand in proposals.candidates:
        if not isinstance(cand.edit, AddDemonstrations):
            out.candidates.append(cand)
            continue
        try:
            edit = with_demonstrations(cand.edit, members, tasks=tasks, roles=roles,
                                       traces=traces, embedder=embedder())
            if why := demos_leak(edit, tasks, roles):
                raise EditRejected(why)
        except EditRejected as exc:
            out.invalid.append(Invalid(cand.source, cand.edit.model_dump_json(), str(exc)))
            continue
        out.candidates.append(Candidate(edit, cand.source, cand.rationale))
    return out
