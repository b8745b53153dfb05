"""`benchmarks/half_kernels.py` runs and times every way it names."""

from benchmarks.half_kernels import HalfKernelsConfig, main


def test_half_kernels_times_the_three_ways_forward_and_training():
    result = main(HalfKernelsConfig(batch=2, rounds=1, threads=1))
    assert len(result["ms"]) == 6 and all(ms["median"] > 0 for ms in result["ms"].values())
    assert {key.split(":")[0] for key in result["ms"]} == {"float32", "bfloat16, torch's kernels", "bfloat16, float32 kernels"}
