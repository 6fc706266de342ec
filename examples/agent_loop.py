"""An agent loop: code strings in, results out, one sandbox for the whole session.

Each cell is what a model might write next. ``Sandbox.execute`` never raises for a
failure of the code, so the loop turns every outcome - a value, printed output, an
exception, a timeout, even a crash - into text to show the model.

Run:  python examples/agent_loop.py
"""

from capbridge import Execution, Limits, Sandbox

CELLS = [
    "import statistics\nscores = [71, 88, 93, 64]\nprint('loaded', len(scores), 'scores')",
    "statistics.mean(scores)",
    "scores.append('ninety')\nsorted(scores)",  # a TypeError: the model sees it, state survives
    "scores.pop()\nmax(scores) - min(scores)",
    "while True:\n    pass",  # a runaway: interrupted after the timeout, sandbox lives on
    "for i in range(400):\n    print('line', i)",  # more output than the budget: cut, with a note
    "def broken(:\n    pass",  # a syntax error
    "len(scores)",
]


def observe(run: Execution) -> str:
    """What the model is shown after a cell."""
    parts = [run.stdout, run.stderr]
    if run.error is not None:
        parts.append(f"{type(run.error).__name__}: {run.error}")
    elif run.value is not None:
        parts.append(repr(run.value))
    text = "".join(p if p.endswith("\n") or not p else p + "\n" for p in parts if p)
    return text or "(nothing)\n"


def main() -> None:
    limits = Limits(memory_mb=256, max_output_kb=1, wall_seconds=10)
    with Sandbox(limits=limits) as sb:
        for n, cell in enumerate(CELLS, 1):
            run = sb.execute(cell, timeout=0.5)
            print(f"--- cell {n} ({run.duration * 1000:.1f} ms, alive={run.alive})")
            print(observe(run), end="")
            if not run.alive:
                print("the sandbox died; a real loop would start a new one")
                break


if __name__ == "__main__":
    main()
