"""Signatures, modes, mass and mode identity across nights."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cegraph.fss.failure import Failure
from cegraph.fss.failure_space import analyze_failures
from cegraph.fss.mass import expected_failure_mass, wilson
from cegraph.fss.modes import FailureMode, PreviousMode, find_modes, match_modes
from cegraph.fss.signature import Signature, SignatureBuilder, normalize_message


def failure(i, message, node="solve", op="ChainOfThought", depth=1, cls="wrong_answer"):
    return Failure(f"f{i}", f"r{i}", "wf", "v1", f"t{i}", node, op, depth, cls, message,
                   "", "", 0.0)


def test_normalization_merges_numbers_and_keeps_kinds_apart():
    assert normalize_message("expected 18, got 16") == normalize_message("expected 7, got 9")
    assert normalize_message("NameError: name 'x' is not defined") != normalize_message(
        "expected 7, got 9")
    assert normalize_message("AssertionError: assert candidate([1,2,3]) == 6") == \
        normalize_message("AssertionError: assert candidate([4, 5]) == -1")
    # each code task names its own function: the name is incidental, like a number
    assert normalize_message("AssertionError: assert count_rotation([4,5,1,2,3]) == 2") == \
        normalize_message("AssertionError: assert dif_Square(15) == True")
    assert normalize_message("AssertionError: assert (Diff([1,2], [6,7,1])) == [2,6,7]") == \
        normalize_message("AssertionError: assert math.isclose(area(10, 15), 17.3)")
    assert normalize_message("FileNotFoundError: /tmp/run-3/data.csv") == \
        normalize_message("FileNotFoundError: /home/u/other.csv")
    assert normalize_message("TypeError: unsupported operand") != normalize_message(
        "ValueError: unsupported operand")


def test_embedding_cache_skips_the_model_on_a_second_pass(embedder):
    builder = SignatureBuilder(embedder)
    pool = [failure(i, f"expected {i}, got {i + 1}") for i in range(50)]
    before = embedder.calls
    first = builder.build(pool)
    assert embedder.calls == before + 1  # one batch for the one distinct text
    again = builder.build([failure(99, "expected 123, got 456")] + pool)
    assert embedder.calls == before + 1  # everything came from the cache
    assert np.allclose(first[0].vector, again[1].vector)
    assert abs(np.linalg.norm(first[0].vector) - 1.0) < 1e-5


def test_meaning_and_locus_both_shape_the_distance(embedder):
    builder = SignatureBuilder(embedder, locus_weight=0.3)
    a, b, c, d = builder.build([
        failure(1, "expected 18, got 16"), failure(2, "expected 7, got 9"),
        failure(3, "NameError: name 'x' is not defined", cls="exception"),
        failure(4, "expected 18, got 16", node="format", op="Format", depth=2)])
    same, kind, place = (np.linalg.norm(a.vector - b.vector), np.linalg.norm(a.vector - c.vector),
                         np.linalg.norm(a.vector - d.vector))
    assert same < 1e-5 and kind > 0.3 and place > 0.3
    no_locus = SignatureBuilder(embedder, locus_weight=0.0).build([failure(5, "x")])[0]
    assert not no_locus.vector[:32].any()  # weight 0 removes the locus part


def _planted(rng, centers, sizes, noise):
    sigs, truth = [], []
    dim = centers.shape[1]
    for k, (c, n) in enumerate(zip(centers, sizes, strict=True)):
        for _ in range(n):
            v = c + rng.normal(0, 0.03, dim)
            sigs.append(Signature(f"f{len(sigs)}", "n", "Op", 1, "c", "t", f"h{len(sigs)}",
                                  v.astype(np.float32)))
            truth.append(k)
    for _ in range(noise):
        v = rng.normal(0, 1, dim)
        v = 3 * v / np.linalg.norm(v)
        sigs.append(Signature(f"f{len(sigs)}", "n", "Op", 1, "c", "t", f"h{len(sigs)}",
                              v.astype(np.float32)))
        truth.append(-1)
    return sigs, truth


def test_modes_recover_planted_clusters_and_keep_noise():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (4, 16))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    sigs, truth = _planted(rng, centers, [60, 40, 25, 10], noise=8)
    result = find_modes(sigs, eps=0.3, min_size=3)
    label = {fid: i for i, m in enumerate(result.modes) for fid in m.failure_ids}
    predicted = [label.get(s.failure_id, -1) for s in sigs]
    assert adjusted_rand_score(truth, predicted) > 0.9
    assert [m.size for m in result.modes] == [60, 40, 25, 10]  # ranked by mass
    assert len(result.noise_ids) == 8


def test_repeated_template_is_a_mode_not_noise():
    vec = np.ones(8, dtype=np.float32) / np.sqrt(8)
    sigs = [Signature(f"f{i}", "n", "Op", 1, "c", "t", "same", vec) for i in range(5)]
    result = find_modes(sigs, min_size=3)
    assert len(result.modes) == 1 and result.modes[0].size == 5 and not result.noise_ids


def test_mass_and_interval_on_a_hand_computed_case():
    mass = expected_failure_mass(runs=100, mode_sizes={"a": 20, "b": 5}, noise=5)
    assert mass.total.mass == pytest.approx(0.30)
    assert mass.per_mode["a"].mass == pytest.approx(0.20)
    assert mass.noise.mass == pytest.approx(0.05)
    # Wilson 95% for 30/100, by hand: centre 0.3074, half-width 0.0884
    assert mass.total.lo == pytest.approx(0.2189, abs=1e-4)
    assert mass.total.hi == pytest.approx(0.3958, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        expected_failure_mass(runs=3, mode_sizes={"a": 4}, noise=0)


def test_modes_matched_across_nights(embedder):
    builder = SignatureBuilder(embedder)
    night1 = ([failure(i, f"expected {i}, got {i + 2}") for i in range(10)]
              + [failure(100 + i, "NameError: name 'v' is not defined", "code", "Programmer",
                         cls="exception") for i in range(6)])
    first = analyze_failures(night1, runs=40, builder=builder)
    assert [m.status for m in first.modes] == ["new", "new"]
    previous = [PreviousMode(m.mode_id, m.centroid, m.mass, m.label, m.mass_lo, m.mass_hi)
                for m in first.modes]
    wrong_id = next(m.mode_id for m in first.modes if m.locus_node == "solve")
    name_id = next(m.mode_id for m in first.modes if m.locus_node == "code")

    night2 = ([failure(200 + i, f"expected {i}, got {i + 5}") for i in range(25)]
              + [failure(300 + i, "AssertionError: assert candidate(3) == 4", "test", "Test",
                         2, "test_failure") for i in range(4)])
    second = analyze_failures(night2, runs=40, builder=builder, previous=previous)
    by_locus = {m.locus_node: m for m in second.modes}
    assert by_locus["solve"].mode_id == wrong_id and by_locus["solve"].status == "growing"
    assert by_locus["test"].status == "new" and by_locus["test"].mode_id not in (wrong_id, name_id)
    assert [p.mode_id for p in second.resolved] == [name_id]
    assert second.mass.total.failures == 29


def test_llm_mode_label_is_parsed_or_rejected(scripted):
    import asyncio

    from cegraph.fss.mode_label import llm_label
    from cegraph.llm import LLM

    vec = np.ones(8, dtype=np.float32)
    mode = find_modes([Signature(f"f{i}", "solve", "ChainOfThought", 1, "wrong_answer",
                                 "[wrong_answer] expected <NUM>, got <NUM>", "h", vec)
                       for i in range(3)]).modes[0]
    rule = mode.label
    scripted.reply = lambda m: 'Sure! {"label": "Arithmetic slip in final step"}'
    assert asyncio.run(llm_label(mode, ["expected 18, got 16"], LLM("scripted/m"))) == \
        "Arithmetic slip in final step"
    assert mode.label.startswith("Arithmetic slip") and rule in mode.label
    scripted.reply = lambda m: "I think it is about arithmetic"
    assert asyncio.run(llm_label(mode, ["expected 18, got 16"], LLM("scripted/m"))) is None
    assert mode.label == rule
    scripted.reply = lambda m: '{"label": ""}'
    assert asyncio.run(llm_label(mode, ["x"], LLM("scripted/m"))) is None


def _mode(ids, centroid, failures, runs):
    from cegraph.fss.mass import estimate

    est = estimate(failures, runs)
    return FailureMode(ids[0], list(ids), np.asarray(centroid, dtype=np.float32), 1.0, "n",
                       "Op", "t", list(ids[:1]), mass=est.mass, mass_lo=est.lo, mass_hi=est.hi)


def _previous(mode):
    return PreviousMode(mode.mode_id, mode.centroid, mode.mass, mode.label, mode.mass_lo,
                        mode.mass_hi)


def test_trend_needs_separated_intervals():
    here = [1.0, 0.0]
    yesterday = _previous(_mode(["m-a"], here, 2, 40))
    for failures, status in ((3, "stable"), (1, "stable"), (20, "growing")):
        today = _mode(["m-new"], here, failures, 40)
        match_modes([yesterday], [today])
        assert today.status == status, (failures, today.status)
    big = _previous(_mode(["m-b"], here, 20, 40))
    today = _mode(["m-new"], here, 2, 40)
    match_modes([big], [today])
    assert today.status == "shrinking"


def test_a_new_mode_never_takes_an_id_the_workflow_used_before():
    from cegraph.fss.modes import _mode_id

    seed_id = _mode_id("f1")
    # yesterday's mode (seeded by f1) moved too far: it is resolved, and today's mode, seeded
    # by the same failure, must not take its id (the rows would collide on night, mode)
    resolved_prev = _previous(_mode([seed_id], [0.0, 1.0], 3, 40))
    today = _mode([seed_id], [1.0, 0.0], 3, 40)
    today.failure_ids = ["f1", "f2", "f3"]
    resolved = match_modes([resolved_prev], [today], used_ids={_mode_id("f1", 1)})
    assert [p.mode_id for p in resolved] == [seed_id]
    assert today.status == "new" and today.mode_id not in (seed_id, _mode_id("f1", 1))
    twin = _mode([seed_id], [0.5, 0.5], 3, 40)
    twin.failure_ids = ["f1", "f4", "f5"]
    other = _mode([seed_id], [-1.0, 0.0], 3, 40)
    other.failure_ids = ["f1", "f6", "f7"]
    match_modes([], [twin, other], used_ids={seed_id})
    assert len({twin.mode_id, other.mode_id, seed_id}) == 3
