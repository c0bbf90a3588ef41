"""Every built-in prompt text the operators send, in one place: the operator library's
fingerprint (part of a workflow's version id) hashes these values, so editing one changes
the id of every workflow that could behave differently."""

from __future__ import annotations

from cegraph.task import Kind, Task

ANSWER_FORMAT: dict[Kind, str] = {
    "math": "Put the final answer in \\boxed{}.",
    "code": "Return the complete Python function in one ```python code block.",
    "qa": "End with a line 'Answer: <short answer>' giving only the answer (a few words).",
}

#: What Format asks for, per task kind, before the answer format.
FORMAT_INSTRUCTION: dict[Kind, str] = {
    "math": "Give only the final answer to the problem, in \\boxed{}.",
    "code": "Give only the final, complete Python function in one ```python code block.",
    "qa": "Give only the short final answer (a few words), as 'Answer: <answer>'.",
}

SOLVE = "Solve the problem. Think step by step."

REVIEW = ("Check the solution carefully. If it is correct, reply with the single word "
          "CORRECT. Otherwise explain the mistake briefly.")

# the 0.5B returned the previous code unchanged in 62 of 64 MBPP revisions under "Write a
# corrected solution."
REVISE = ("The previous solution is wrong, as the feedback shows. Find the mistake that causes "
          "it and write a corrected solution; do not repeat the previous solution unchanged.")

VOTE = ("Which candidate's final answer agrees with the most others and is best reasoned? "
        "Reply with its number only.")

PROGRAM = ("Write a short Python program that computes the answer to the problem above and "
           "prints only the final answer. Reply with one ```python code block.")


def demonstrations(demos: list[dict[str, str]]) -> str:
    """Worked examples a node's prompt opens with (empty for none): the same text for every
    input, so the engine keeps it as a shared prefix."""
    return "".join(f"Worked example:\nProblem:\n{d['input']}\n\nSolution:\n{d['output']}"
                   "\n\n---\n\n" for d in demos)


def rules(items: list[str]) -> str:
    """Rules added after a node's instruction (empty for none)."""
    return "".join(f"\nRule: {r}" for r in items)


def task_prompt(kind: Kind, text: str, *, entry_point: str | None = None) -> str:
    if kind == "code" and entry_point:
        return f"{text}\n\nImplement the Python function `{entry_point}`."
    return text


def solve_prompt(task: Task, question: str) -> str:
    """The plain solve request a sample of a solution answers: the `Problem:` prefix the run's
    other calls share (ChainOfThought), then the instruction and the answer format."""
    return (f"Problem:\n{task_prompt(task.kind, question, entry_point=task.entry_point)}"
            f"\n\n{SOLVE} {ANSWER_FORMAT[task.kind]}")
