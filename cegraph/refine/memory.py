"""What was rejected before: an edit judged and rejected for a failure mode is not proposed
for that mode again, in a later refinement (night) too, unless the mode changed.

An edit is keyed by its operation, target and parameters (`edit_key`: the hash of its
canonical JSON); a mode by its id and its members (`mode_key`: the hash of its shown task
ids). Mode ids are stable across nights for the same failures (`cegraph.fss.modes`); a mode
that gained or lost members is a changed mode, and the edits rejected for it may be tried
anew. Only a verdict's rejection counts: an edit that was accepted but not picked, invalid,
or undecided is no evidence against it.
"""

from __future__ import annotations

import hashlib
import json

from cegraph.refine.edits import Edit
from cegraph.refine.proposer import Invalid, Proposals, Target

#: The reason prefix of an accepted edit another candidate beat (not a rejection on evidence).
NOT_CHOSEN = "not chosen:"


def edit_key(edit: Edit) -> str:
    return hashlib.sha256(json.dumps(edit.model_dump(mode="json"), sort_keys=True)
                          .encode()).hexdigest()[:16]


def mode_key(target: Target) -> str:
    return hashlib.sha256("\n".join(sorted(target.task_ids)).encode()).hexdigest()[:16]


def rejected_on_evidence(row: dict) -> bool:
    """Whether an edit row is a rejection a later night should remember."""
    return row.get("status") == "rejected" and not str(row.get("reject_reason") or ""
                                                        ).startswith(NOT_CHOSEN)


def forget_rejected(proposals: Proposals, rejected: set[str]) -> Proposals:
    """`proposals` without the candidates whose key is in `rejected` (moved to `invalid`)."""
    out = Proposals(invalid=list(proposals.invalid))
    for cand in proposals.candidates:
        if edit_key(cand.edit) in rejected:
            out.invalid.append(Invalid(cand.source, cand.edit.model_dump_json(),
                                       "rejected before for this mode (unchanged since)"))
        else:
            out.candidates.append(cand)
    return out
