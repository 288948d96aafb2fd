"""benchmarks/input_dtypes.py: the network's step for each way a user hands it spikes."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("args,message", [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--steps-t", "0"], "--steps-t must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--net", "rnn"], "invalid choice: 'rnn'"),
])
def test_input_dtypes_benchmark_refuses_bad_options(args, message, capsys, benchmark):
    """benchmarks/input_dtypes.py names the option that is wrong before it loads any data."""
    with pytest.raises(SystemExit) as err:
        benchmark("input_dtypes").main(args)
    assert err.value.code == 2 and message in capsys.readouterr().err


def test_input_dtypes_benchmark_times_every_input_kind(mnist_dir, tmp_path, capsys, benchmark):
    """A tiny real run on MNIST digits: a row per input kind, positive times, the JSON written."""
    import json

    out = tmp_path / "dtypes.json"
    assert benchmark("input_dtypes").main([
        "--data-dir", str(mnist_dir), "--rounds", "2", "--steps", "2", "--warmup", "1", "-T", "4",
        "--batch", "8", "--threads", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    for case in ("float32", "bool", "uint8", "float32-reused"):
        assert f"| {case} |" in table
        assert len(report["ms_runs"][case]) == 2 and report["ms"][case] > 0
