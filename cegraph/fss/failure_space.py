"""One pass over the Failure Signature Space: failures -> signatures -> modes -> mass, and
today's modes matched to yesterday's. Pure library code; storage is done by the caller."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cegraph.fss.failure import Failure
from cegraph.fss.mass import FailureMass, expected_failure_mass
from cegraph.fss.modes import (
    DEFAULT_EPS,
    DEFAULT_MIN_SIZE,
    FailureMode,
    PreviousMode,
    find_modes,
    match_modes,
)
from cegraph.fss.signature import Signature, SignatureBuilder


@dataclass
class Analysis:
    signatures: list[Signature]
    modes: list[FailureMode]  # ranked by mass, with status and stable ids
    noise_ids: list[str]
    resolved: list[PreviousMode]
    mass: FailureMass


def analyze_failures(failures: Sequence[Failure], runs: int, builder: SignatureBuilder, *,
                     previous: Sequence[PreviousMode] = (), used_ids: Iterable[str] = (),
                     eps: float = DEFAULT_EPS, min_size: int = DEFAULT_MIN_SIZE,
                     texts: Mapping[str, str] | None = None) -> Analysis:
    """Signatures, modes and Expected Failure Mass of `failures` observed over `runs` runs;
    `previous` are the last night's live modes (of the same signature recipe), `used_ids`
    every mode id the workflow had, `texts` the recipe's signature texts by failure id."""
    sigs = builder.build(failures, texts)
    found = find_modes(sigs, eps=eps, min_size=min_size)
    mass = expected_failure_mass(runs, {m.mode_id: m.size for m in found.modes},
                                 len(found.noise_ids))
    for m in found.modes:
        est = mass.per_mode[m.mode_id]
        m.mass, m.mass_lo, m.mass_hi = est.mass, est.lo, est.hi
    resolved = match_modes(previous, found.modes, used_ids=used_ids)
    return Analysis(sigs, found.modes, found.noise_ids, resolved, mass)
