"""``Sandbox.execute``: code strings in, an ``Execution`` out - the agent-loop primitive."""

import pytest

from capbridge import CallTimeout, Execution, Limits, RemoteError, SandboxCrashed, SandboxError

from conftest import make_sandbox


def test_value_of_the_final_expression(sb):
    run = sb.execute("x = 6\ny = 7\nx * y")
    assert isinstance(run, Execution)
    assert run.value == 42 and run.error is None and run.ok and run.alive
    assert run.stdout == "" and run.stderr == ""
    assert run.duration > 0 and run.cpu_seconds >= 0
    assert sb.execute("z = 1").value is None  # no final expression
    assert sb.execute("x\ny").value == 7  # only the last expression counts
    assert sb.execute("").value is None
    assert sb.eval("x + y + z") == 14  # the runs share __main__


def test_what_a_run_printed(sb):
    run = sb.execute("import sys\nprint('out')\nprint('err', file=sys.stderr)\n'v'")
    assert (run.stdout, run.stderr, run.value) == ("out\n", "err\n", "v")
    first = sb.execute("print('a', end='')")
    second = sb.execute("print('b', end='')")
    assert (first.stdout, second.stdout) == ("a", "b")  # nothing bleeds between runs


def test_syntax_error_is_data(sb):
    run = sb.execute("print('never')\ndef broken(:\n")
    assert not run.ok and run.alive and run.value is None
    assert isinstance(run.error, RemoteError) and run.error.type_name == "SyntaxError"
    assert "broken(:" in run.error.remote_traceback  # the line is shown, with a caret
    assert run.stdout == ""


def test_exception_is_data_and_keeps_what_ran(sb):
    run = sb.execute("done = 'yes'\nprint('before')\n1 / 0\nprint('after')")
    assert isinstance(run.error, RemoteError) and run.error.type_name == "ZeroDivisionError"
    assert "1 / 0" in run.error.remote_traceback
    assert run.stdout == "before\n" and run.alive
    assert sb.eval("done") == "yes"


def test_huge_output_is_cut_with_a_marker(sandbox_factory):
    sb = sandbox_factory(limits=Limits(max_output_kb=4))
    run = sb.execute("import sys\nprint('x' * 100000)\nprint('y' * 50000, file=sys.stderr)\n5")
    assert run.value == 5 and run.ok
    kept, _, marker = run.stdout.partition("\n[")
    assert kept == "x" * 4096
    assert "output cut off at 4 KiB (Limits.max_output_kb)" in marker
    assert "95905 more bytes discarded" in marker  # 100001 written, 4096 kept
    kept, _, marker = run.stderr.partition("\n[")
    assert kept == "y" * 4096 and "45905 more bytes discarded" in marker
    lines = sb.execute("for i in range(2000):\n    print(i)").stdout
    assert "\n\n" not in lines and lines.endswith("more bytes discarded]\n")
    again = sb.execute("print('small')")  # the budget is per run
    assert again.stdout == "small\n"


def test_output_budget_is_per_call_not_per_life():
    out = []
    sb = make_sandbox(stdout=out.append, limits=Limits(max_output_kb=1))
    try:
        for i in range(5):
            sb.exec(f"print('{i}' * 600)")
        text = "".join(out)
        for i in range(5):
            assert f"{i}" * 600 in text  # every call got its own 1 KiB
        assert "cut off" not in text
        sb.exec("print('z' * 5000)")
        assert "the rest of this call's output is discarded" in "".join(out)
    finally:
        sb.close()


def test_streaming_calls_are_not_captured():
    out = []
    sb = make_sandbox(stdout=out.append)
    try:
        run = sb.execute("print('kept')")
        sb.exec("print('streamed')")
        assert run.stdout == "kept\n"
        assert "".join(out) == "streamed\n"
    finally:
        sb.close()


def test_timeout_is_data(sandbox_factory):
    sb = sandbox_factory()
    sb.interrupt_grace = 5.0
    run = sb.execute("print('started')\nwhile True:\n    pass", timeout=0.2)
    assert isinstance(run.error, CallTimeout) and run.alive
    assert run.stdout == "started\n"
    assert run.duration >= 0.2 and run.cpu_seconds > 0
    assert sb.execute("'next'").value == "next"


def test_a_run_that_kills_the_sandbox_is_data(sb):
    run = sb.execute("print('bye', flush=True)\nimport os\nos._exit(3)")
    assert isinstance(run.error, SandboxCrashed) and run.error.exitcode == 3
    assert not run.alive
    assert run.stdout == "bye\n"
    with pytest.raises(SandboxError):  # the sandbox itself is gone: that is not data
        sb.execute("1")


def test_execute_needs_a_string(sb):
    with pytest.raises(TypeError):
        sb.execute(b"1")  # type: ignore[arg-type]
