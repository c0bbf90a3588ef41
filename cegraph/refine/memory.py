"""What was rejected before: an edit judged and rejected for a failure mode is not proposed
for that mode again, in a later refinement (night) too, unless the mode changed.

An edit is keyed by its operation, target and parameters (`edit_key`: the hash of its
canonical JSON). A mode is identified across refinements as nights identify it
(`cegraph.fss.modes.match_modes`): the same mode when its centroid lies within
`MATCH_DISTANCE` of the one it had when the edit was rejected (a group of failures without a
dense mode, by its id `noise:<node>:<class>`, which names its locus and class). It *changed*
when its failure mass moved: the 95% intervals then and now do not overlap (`modes.trend`
is not `stable`). Each edit row keeps the mode's state when proposed (`mode_state`: centroid,
failures, shown runs). Only a verdict's rejection counts: an edit that was accepted but not
picked, invalid, or undecided is no evidence against it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cegraph.fss.mass import wilson
from cegraph.fss.modes import MATCH_DISTANCE
from cegraph.refine.edits import Edit
from cegraph.refine.proposer import Invalid, Proposals, Target

#: The reason prefix of an accepted edit another candidate beat (not a rejection on evidence).
NOT_CHOSEN = "not chosen:"


def edit_key(edit: Edit) -> str:
    return hashlib.sha256(json.dumps(edit.model_dump(mode="json"), sort_keys=True)
                          .encode()).hexdigest()[:16]


def mode_state(target: Target) -> str:
    """The target mode as an edit row keeps it (JSON)."""
    return json.dumps({"centroid": [round(float(x), 5) for x in target.centroid],
                       "failures": len(target.task_ids), "runs": target.runs})


def rejected_on_evidence(row: Mapping[str, Any]) -> bool:
    """Whether an edit row is a rejection a later night should remember."""
    return row.get("status") == "rejected" and not str(row.get("reject_reason") or ""
                                                        ).startswith(NOT_CHOSEN)


def same_mode_unchanged(target: Target, mode_id: str, state: str | None) -> bool:
    """Whether a rejection recorded for (`mode_id`, `state`) stands for `target` now."""
    then = json.loads(state) if state else {}
    if target.centroid and then.get("centroid"):
        a, b = np.asarray(target.centroid), np.asarray(then["centroid"])
        if a.shape != b.shape or float(np.linalg.norm(a - b)) > MATCH_DISTANCE:
            return False
    elif mode_id != target.target_id:
        return False
    # changed: the mass intervals do not overlap (as `modes.trend`, growing or shrinking)
    lo_now, hi_now = wilson(len(target.task_ids), max(1, target.runs))
    lo, hi = wilson(int(then.get("failures", 0)), max(1, int(then.get("runs", 0))))
    return lo_now <= hi and lo <= hi_now


def rejected_keys(target: Target, rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """Keys of the edits `rows` (earlier rejections: edit_key, target_mode_id, mode_state)
    that stand for `target`."""
    return {r["edit_key"] for r in rows
            if same_mode_unchanged(target, r["target_mode_id"], r.get("mode_state"))}


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
