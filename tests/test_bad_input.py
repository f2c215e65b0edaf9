"""Bad input at the command lines of the demos (``python -m llmtrain.parallel.*``) and in
``zero.wrap`` (issue 21 §5; the newcomer review's D8, D9, D12, D14, D15, D17, D18): one line on
stderr naming the flag or variable and the rule, exit status 2, as ``llmtrain``'s own CLI.

Most cases call a demo's ``cli`` in this process (harness.main; stderr captured): a flag check
fails before any rank starts. Two launch ranks (a rank's ValueError, the bubble warning) and two
run as a user does, in a separate process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from llmtrain.parallel import zero
from llmtrain.parallel.demos import harness, pipeline_parallel, three_d
from llmtrain.parallel.launch import RankError


@pytest.fixture(autouse=True)
def not_under_torchrun(monkeypatch):
    """The demos launch their own ranks unless RANK is set: these tests set it themselves."""
    for var in harness.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)


def one_line_exit_2(capsys, cli, argv) -> str:
    """Run a demo's command line in this process; it must exit 2 with one line on stderr."""
    with pytest.raises(SystemExit) as exit_:
        cli(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


# --- zero.wrap -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [list(torch.nn.Linear(2, 2).parameters()),
                                   tuple(torch.nn.Linear(2, 2).parameters())])
def test_zero_wrap_of_parameters_names_the_argument(model):
    """zero.wrap([parameters], 1) raised AttributeError; the check comes before the process
    group's, so it is named outside a rank too."""
    with pytest.raises(ValueError, match=r"^model must be a torch.nn.Module, got a (list|tuple) of "
                                         r"2 Parameter \(pass the model itself, not its parameters\)$"):
        zero.wrap(model, 1)


# --- flags, checked before any rank starts -------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["--t-f", "-1"], "argument --t-f: must be a positive finite number of seconds, got -1"),
    (["--t-f", "0"], "argument --t-f: must be a positive finite number of seconds, got 0"),
    (["--t-b", "nan"], "argument --t-b: must be a positive finite number of seconds, got nan"),
    (["--t-b", "inf"], "argument --t-b: must be a positive finite number of seconds, got inf"),
    (["--t-f", "fast"], "argument --t-f: must be a positive finite number of seconds, got fast"),
    (["--nproc", "0"], "argument --nproc: must be a positive integer, got 0"),
    (["--nproc", "4", "--microbatches", "2"], "microbatches must be at least the 4 stages, got 2"),
    (["--schedule", "zb"], "argument --schedule: invalid choice: 'zb'"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_pipeline_demo_bad_flag(capsys, argv, needle):
    line = one_line_exit_2(capsys, pipeline_parallel.cli, argv)
    assert line.startswith("python -m llmtrain.parallel.demos.pipeline_parallel: error: ") and needle in line


@pytest.mark.parametrize("argv, needle", [
    (["--dp", "2", "--tp", "2", "--pp", "2", "--nproc", "4"],
     "dp·tp·pp = 8 must equal the number of ranks 4"),
    (["--engine", "torch", "--zero", "1"], "--zero 1 has no FSDP2 equivalent"),
    (["--tp", "3"], "tp must divide num_heads=4, got tp=3"),  # refused before any rank starts
    (["--pp", "8"], "pp must be at most num_layers=2, got pp=8"),
])
def test_3d_demo_bad_flag(capsys, argv, needle):
    line = one_line_exit_2(capsys, three_d.cli, argv)
    assert line.startswith("python -m llmtrain.parallel.demos.parallelize: error: ") and needle in line


# --- RANK in the environment: one of torchrun's ranks, or a stray variable -----------------------

@pytest.mark.parametrize("env, needle", [
    ({"RANK": "0"}, "RANK=0 is set, so this process would be one rank of torchrun's, but "
                    "WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "but MASTER_ADDR, MASTER_PORT are not"),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, "but MASTER_PORT is not"),
    ({"RANK": "0", "WORLD_SIZE": "two", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "WORLD_SIZE must be a positive integer, got 'two'"),
    ({"RANK": "0", "WORLD_SIZE": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "WORLD_SIZE must be a positive integer, got '0'"),
])
def test_torchrun_environment_incomplete(capsys, monkeypatch, env, needle):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    line = one_line_exit_2(capsys, pipeline_parallel.cli, [])
    assert needle in line
    if "RANK=" in line:
        assert "start it with torchrun, or unset RANK" in line


# --- a rank's argument check -------------------------------------------------------------------

def _traceback(last: str) -> str:
    return ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
            "    raise ValueError(\"a: b\")\n" + last + "\n")


def test_rank_value_error_reads_the_last_exception():
    msg = "tp must divide num_heads=4, got tp=3"
    assert harness.rank_value_error(RankError(0, _traceback(f"ValueError: {msg}"))) == msg
    assert harness.rank_value_error(RankError(1, _traceback("RuntimeError: gloo died"))) is None
    chained = (_traceback("ValueError: first") + "\nDuring handling of the above exception, "
               "another exception occurred:\n\n" + _traceback("KeyError: 'x'"))
    assert harness.rank_value_error(RankError(0, chained)) is None
    assert harness.rank_value_error(RankError(0, "process exited with code 3")) is None


def test_a_ranks_value_error_is_one_line(capsys):
    """--pp 2 --microbatches 1 is refused inside the ranks (parallelize's check): the launch
    stops every rank, and the traceback of 35-39 lines becomes its last line."""
    line = one_line_exit_2(capsys, three_d.cli, ["--dp", "1", "--tp", "1", "--pp", "2",
                                                  "--microbatches", "1"])
    assert line.startswith("python -m llmtrain.parallel.demos.parallelize: error: microbatches must be "
                           "at least pp=2"), line
    assert line.endswith(", got microbatches=1 (rank 0)") or line.endswith("(rank 1)"), line


# --- a measurement that cannot resolve what it reports -----------------------------------------

def test_unresolved_pads():
    pads = {"F": 0.02, "B": 0.04, "v": 1}
    assert pipeline_parallel.unresolved({"F": 0.002, "B": 0.004}, pads) == []
    assert pipeline_parallel.unresolved({"F": 0.011, "B": 0.004}, pads) == ["F"]
    assert pipeline_parallel.unresolved({"F": 0.002, "B": 0.03}, pads) == ["B"]


def test_pads_shorter_than_the_compute_warn(capsys):
    """--t-f 0.0001 reported a measured bubble of 0.736 against 0.111 without a word: the pads
    (0.1 ms) are far below one forward of the tiny LLaMA (milliseconds on a CPU)."""
    pipeline_parallel.cli(["--nproc", "2", "--t-f", "0.0001", "--t-b", "0.0001"])
    captured = capsys.readouterr()
    assert captured.out.startswith("2 stages, bubble: measured ")
    warnings = captured.err.strip().splitlines()
    assert [w.split(":")[1] for w in warnings] == [" --t-f is too short to resolve the bubble",
                                                   " --t-b is too short to resolve the bubble"]
    assert all("more than half its pad of 0.1 ms" in w for w in warnings), warnings


# --- as a user runs them -----------------------------------------------------------------------

@pytest.mark.parametrize("argv, env, needle", [
    (["--t-f", "-1"], {}, "argument --t-f: must be a positive finite number of seconds, got -1"),
    ([], {"RANK": "0"}, "but WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not"),
])
def test_demo_command_line_in_a_process(argv, env, needle):
    clean = {k: v for k, v in os.environ.items() if k not in harness.TORCHRUN_VARS}
    r = subprocess.run([sys.executable, "-m", "llmtrain.parallel.demos.pipeline_parallel", *argv],
                       env={**clean, **env}, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr


def test_ctrl_c_is_one_line(capsys, monkeypatch):
    """Ctrl-C printed a 24-line KeyboardInterrupt traceback (launch has already stopped the
    ranks when it reaches main)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "launch", interrupted)
    with pytest.raises(SystemExit) as exit_:
        pipeline_parallel.cli([])
    assert exit_.value.code == 130
    assert capsys.readouterr().err == "python -m llmtrain.parallel.demos.pipeline_parallel: interrupted\n"


@pytest.mark.parametrize("module", ["data_parallel", "zero", "pipeline_parallel", "parallelize"])
def test_an_old_command_runs_the_demo_it_moved_to(module):
    """``python -m llmtrain.parallel.X`` ran the demo before issue 24; the demo is now
    ``llmtrain.parallel.demos.X`` and the old command runs it (for one release): its usage is the
    new command's, and a bad flag is one line naming the new command, exit 2."""
    ok = subprocess.run([sys.executable, "-m", f"llmtrain.parallel.{module}", "--help"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith(f"usage: python -m llmtrain.parallel.demos.{module} ")
    bad = subprocess.run([sys.executable, "-m", f"llmtrain.parallel.{module}", "--nproc", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith(f"python -m llmtrain.parallel.demos.{module}: error: ")
