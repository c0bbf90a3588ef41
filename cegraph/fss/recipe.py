"""The signature recipe: which readings of a failure its signature's meaning is built from.

- `message`: the evaluator's message alone (`[wrong_answer] expected <NUM>, got <NUM>`);
- `message+features`: plus the trace features (`cegraph.fss.features`), no LLM;
- `message+features+diagnosis`: plus the LLM diagnosis (`cegraph.fss.diagnosis`) where there
  is a valid one: its kind and explanation join the text, and for a `wrong_answer` or
  `no_answer` (where the evaluator cannot tell which node erred) the locus moves to the
  diagnosed node.
- `steps`: the step checker's dominant finding alone (`cegraph.fss.steps`, no LLM): a wrong
  stated step, an invented program output, an unsourced number, ...; a failure with none
  keeps its trace features, else its message;
- `steps+contrast`: the dominant finding with the contrast against a right path where one is
  known (`cegraph.fss.contrast`: "adds where it should multiply", "stopped at an
  intermediate value of the right path"), no LLM;
- `message+steps+contrast`: the message, then that finding;
- `contrast+diagnosis`: the contrastive diagnosis (the diagnoser sees the wrong run beside
  the right path) where valid: its kind; else the `steps+contrast` text.

The recipe is recorded with every signature and every night, and a night is matched only to
an earlier night of the same recipe: vectors built from different texts are not comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from cegraph.fss.diagnosis import KINDS, DiagnosisRecord
from cegraph.fss.failure import Failure
from cegraph.fss.finding import Reading
from cegraph.fss.signature import normalize_message, signature_text

MESSAGE = "message"
FEATURES = "message+features"
DIAGNOSIS = "message+features+diagnosis"
STEPS = "steps"
STEPS_CONTRAST = "steps+contrast"
MESSAGE_STEPS_CONTRAST = "message+steps+contrast"
CONTRAST_DIAGNOSIS = "contrast+diagnosis"
RECIPES = (MESSAGE, FEATURES, DIAGNOSIS, STEPS, STEPS_CONTRAST, MESSAGE_STEPS_CONTRAST,
           CONTRAST_DIAGNOSIS)
#: Recipes that read the step checker and the contrast (`Reading`s).
READS_STEPS = (STEPS, STEPS_CONTRAST, MESSAGE_STEPS_CONTRAST, CONTRAST_DIAGNOSIS)
DEFAULT_RECIPE = STEPS_CONTRAST
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
    return check_recipe(recipe) in (DIAGNOSIS, CONTRAST_DIAGNOSIS)


def uses_contrastive_diagnosis(recipe: str) -> bool:
    return check_recipe(recipe) == CONTRAST_DIAGNOSIS


def recipe_text(failure: Failure, recipe: str, features: str = "",
                diagnosis: DiagnosisRecord | None = None,
                reading: Reading | None = None) -> str:
    """The text a failure's meaning is embedded from under `recipe`."""
    message = signature_text(failure.failure_class, failure.message)
    if recipe in READS_STEPS:
        if recipe == CONTRAST_DIAGNOSIS and diagnosis is not None and diagnosis.valid:
            return KINDS[diagnosis.kind or "other"]
        found = reading.finding(contrast=recipe != STEPS) if reading else None
        words = found.embedded if found else normalize_message(features) or message
        return f"{message}; {words}" if recipe == MESSAGE_STEPS_CONTRAST else words
    parts = [message]
    if recipe != MESSAGE and features:
        parts.append(normalize_message(features))
    if recipe == DIAGNOSIS and diagnosis is not None and diagnosis.valid:
        parts.append(f"{KINDS[diagnosis.kind or 'other']}: "
                     f"{normalize_message(diagnosis.explanation or '')}")
    return "; ".join(parts)


def apply_recipe(failures: Sequence[Failure], recipe: str, *,
                 features: Mapping[str, str] | None = None,
                 diagnoses: Mapping[str, DiagnosisRecord] | None = None,
                 readings: Mapping[str, Reading] | None = None
                 ) -> tuple[list[Failure], dict[str, str]]:
    """The failures as the signatures see them (locus moved to a diagnosed node where the
    recipe allows) and each one's signature text, by failure id."""
    check_recipe(recipe)
    features = features or {}
    readings = readings or {}
    diagnoses = diagnoses if uses_diagnosis(recipe) and diagnoses else {}
    out, texts = [], {}
    for f in failures:
        d = diagnoses.get(f.failure_id)
        if (d is not None and d.valid and d.node and f.failure_class in RELOCATABLE
                and d.node != f.locus_node and d.node_operator is not None):
            f = replace(f, locus_node=d.node, locus_operator=d.node_operator,
                        locus_depth=d.node_depth if d.node_depth is not None else
                        f.locus_depth)
        out.append(f)
        texts[f.failure_id] = recipe_text(f, recipe, features.get(f.failure_id, ""), d,
                                          readings.get(f.failure_id))
    return out, texts
