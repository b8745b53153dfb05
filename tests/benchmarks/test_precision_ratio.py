"""The first DDPO-IS ratio is exactly 1 when sampling and training share a precision, and not when
they do not (what the train CLI's refusal of a mismatched mixed precision rests on)."""

from benchmarks.precision_ratio import PrecisionRatioConfig, first_ratios

CONFIG = PrecisionRatioConfig(models=("tiny-random",), num_envs=2, num_inference_steps=3, output=None)


def test_the_first_ratio_is_exactly_one_in_a_shared_precision_and_not_across_two():
    for precision in ("fp32", "bf16"):
        result = first_ratios("tiny-random", precision, CONFIG)
        assert result["sum"]["max"] == 0.0 and result["mean"]["max"] == 0.0, precision
    mixed = first_ratios("tiny-random", "fp32 sampling, bf16 training", CONFIG)
    assert mixed["mean"]["max"] > 1e-4 and mixed["sum"]["max"] > 1e-2
