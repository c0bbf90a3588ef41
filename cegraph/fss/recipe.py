"""The signature recipe: which readings of a failure its signature's meaning is built from.

- `message`: the evaluator's message alone (`[wrong_answer] expected <NUM>, got <NUM>`);
- `message+features`: plus the trace features (`cegraph.fss.features`), no LLM;
- `message+features+diagnosis`: plus the LLM diagnosis (`cegraph.fss.diagnosis`) where there
  is a valid one: its kind and explanation join the text, and for a `wrong_answer` or
  `no_answer` (where the evaluator cannot tell which node erred) the locus moves to the
  diagnosed node.

The recipe is recorded with every signature and every night, and a night is matched only to
an earlier night of the same recipe: vectors built from different texts are not comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from cegraph.fss.diagnosis import KINDS, DiagnosisRecord
from cegraph.fss.failure import Failure
from cegraph.fss.signature import normalize_message, signature_text

MESSAGE = "message"
FEATURES = "message+features"
DIAGNOSIS = "message+features+diagnosis"
RECIPES = (MESSAGE, FEATURES, DIAGNOSIS)
DEFAULT_RECIPE = FEATURES
#: Failure classes whose locus a diagnosis may move: the evaluator could not tell the node.
RELOCATABLE = ("wrong_answer", "no_answer")


class UnknownRecipe(ValueError):
    pass


def check_recipe(name: str) -> str:
    if name not in RECIPES:
        raise UnknownRecipe(f"unknown signature recipe {name!r}; choose one of "
                            f"{', '.join(RECIPES)}")
    return name


def uses_diagnosis(recipe: str) -> bool:
    return check_recipe(recipe) == DIAGNOSIS


def recipe_text(failure: Failure, recipe: str, features: str = "",
                diagnosis: DiagnosisRecord | None = None) -> str:
    """The text a failure's meaning is embedded from under `recipe`."""
    parts = [signature_text(failure.failure_class, failure.message)]
    if recipe != MESSAGE and features:
        parts.append(normalize_message(features))
    if recipe == DIAGNOSIS and diagnosis is not None and diagnosis.valid:
        parts.append(f"{KINDS[diagnosis.kind or 'other']}: "
                     f"{normalize_message(diagnosis.explanation or '')}")
    return "; ".join(parts)


def apply_recipe(failures: Sequence[Failure], recipe: str, *,
                 features: Mapping[str, str] | None = None,
                 diagnoses: Mapping[str, DiagnosisRecord] | None = None
                 ) -> tuple[list[Failure], dict[str, str]]:
    """The failures as the signatures see them (locus moved to a diagnosed node where the
    recipe allows) and each one's signature text, by failure id."""
    check_recipe(recipe)
    features = features or {}
    diagnoses = diagnoses if recipe == DIAGNOSIS and diagnoses else {}
    out, texts = [], {}
    for f in failures:
        d = diagnoses.get(f.failure_id)
        if (d is not None and d.valid and d.node and f.failure_class in RELOCATABLE
                and d.node != f.locus_node and d.node_operator is not None):
            f = replace(f, locus_node=d.node, locus_operator=d.node_operator,
                        locus_depth=d.node_depth if d.node_depth is not None else
                        f.locus_depth)
        out.append(f)
        texts[f.failure_id] = recipe_text(f, recipe, features.get(f.failure_id, ""), d)
    return out, texts
