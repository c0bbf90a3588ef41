"""The baselines the loop must beat, in the same harness and at the same budget.

- `scalar` (the paper's information-collapse ablation): the same LLM proposer and edit
  vocabulary, but it sees only the aggregate score and a random handful of failures, no
  modes, no locus, no operator prior (`Settings(method="scalar")`, see `targets.py`).
- `random`: random valid edits from the vocabulary (`RandomProposer`), verified and accepted
  by the same rule.
- static reference workflows: IO, CoT, CoT + self-consistency and program-of-thought
  (`reference`), scored beside the seed and the refined versions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from cegraph.graph import Workflow
from cegraph.operators import REGISTRY
from cegraph.refine.edits import (
    AddDemonstrations,
    AddReviewRevise,
    AddRule,
    AddTestRevise,
    CheckThenEscalate,
    Edit,
    EditPrompt,
    EditRejected,
    InsertNode,
    RemoveNode,
    RepairExtraction,
    ReplaceOperator,
    SetParam,
    WrapEnsemble,
)
from cegraph.refine.proposer import Candidate, Proposals, Target
from cegraph.task import Kind

REFERENCES = {"io": "io.yaml", "cot": "cot.yaml", "cot-sc": "cot_sc.yaml", "pot": "pot.yaml"}
_RULES = ("Check each step of the computation before giving the answer.",
          "Answer exactly what the question asks, not an intermediate quantity.",
          "Read every number and condition of the problem before solving it.")
_INSTRUCTIONS = ("Solve the problem carefully. Think step by step.",
                 "Work through the problem one step at a time and check each step.",
                 "Solve the problem. Be concise.")


def reference(name: str) -> Workflow:
    """A static reference workflow: io, cot, cot-sc or pot (math)."""
    if name not in REFERENCES:
        raise KeyError(f"no reference workflow {name!r}; choose one of {', '.join(REFERENCES)}")
    return Workflow.load(Path(__file__).parent / "references" / REFERENCES[name])


def random_edit(wf: Workflow, kind: Kind, rng: random.Random) -> Edit:
    """One edit drawn uniformly over the vocabulary's kinds, with random arguments."""
    node = rng.choice(wf.nodes)
    llm_ops = sorted(o for o, c in REGISTRY.items() if "max_tokens" in c.params
                     and set(c.inputs) <= {"input", "context"})
    choices = [
        lambda: InsertNode(operator=rng.choice(["Format"]), anchor=node.id),
        lambda: ReplaceOperator(node=node.id, operator=rng.choice(llm_ops)),
        lambda: WrapEnsemble(node=node.id, n=rng.choice([3, 5, 7])),
        lambda: AddReviewRevise(node=node.id, rounds=rng.choice([1, 2])),
        lambda: EditPrompt(node=node.id, text=rng.choice(_INSTRUCTIONS)),
        lambda: RemoveNode(node=node.id),
        lambda: SetParam(node=node.id, param="max_tokens", value=rng.choice([256, 768, 1024])),
        lambda: SetParam(node=node.id, param="temperature", value=rng.choice([0.0, 0.3, 0.7])),
        lambda: SetParam(node=node.id, param="llm", value=rng.choice([True, False])),
        # the cheap edits too (the loop picks a demonstration's examples, whoever proposes it)
        lambda: AddDemonstrations(node=node.id, k=rng.choice([1, 2, 3])),
        lambda: AddRule(node=node.id, text=rng.choice(_RULES)),
        lambda: CheckThenEscalate(node=node.id, n=rng.choice([2, 3])),
        lambda: RepairExtraction(node=node.id),
    ]
    if kind == "code":
        choices.append(lambda: AddTestRevise(node=node.id, rounds=rng.choice([1, 2])))
    return rng.choice(choices)()


@dataclass
class RandomProposer:
    """Random edits that apply to the workflow (up to k, from at most 20k draws)."""

    seed: int = 0
    projected_calls: int = 0
    round: int = 0

    async def propose(self, wf: Workflow, target: Target, kind: Kind, k: int) -> Proposals:
        rng = random.Random(f"{self.seed}:{wf.version_id}:{self.round}")
        out = Proposals()
        seen: set[str] = set()
        for _ in range(20 * k):
            if len(out.candidates) >= k:
                break
            edit = random_edit(wf, kind, rng)
            try:
                version = edit.apply(wf).version_id
            except EditRejected:
                continue
            if version not in seen and version != wf.version_id:
                seen.add(version)
                out.candidates.append(Candidate(edit, "random", "drawn at random"))
        return out
