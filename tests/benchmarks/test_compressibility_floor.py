"""The compressibility floor script: its figures come from the images they name."""

import numpy as np

from benchmarks.compressibility_floor import FloorConfig, floor
from diffusion_gym.embedded import world
from diffusion_gym.rewards.jpeg import jpeg_size_kb


def test_the_floor_figures_are_the_jpeg_sizes_of_their_images(tmp_path, capsys):
    figures = floor(FloorConfig(eval_prompts=8, output=tmp_path / "floor.json"))
    # 8 prompts: one uniform image in each of the world's 8 background colours
    uniform = np.broadcast_to(world.BACKGROUND_RGB.astype(np.uint8)[:, None, None, :], (8, 32, 32, 3)).copy()
    assert figures["uniform"] == float(jpeg_size_kb(uniform).mean())
    # finishing from a uniform image adds the last steps' residue, more with every step left to them
    untrained = [figures[f"last {k} steps untrained"] for k in (1, 2, 3, 4)]
    assert figures["uniform"] < untrained[0] < untrained[1] < untrained[2] < untrained[3]
    # from black the residue is clipped at 0 where it goes below: less is left than from the muted colours
    black = [figures[f"black, last {k} steps untrained"] for k in (1, 2, 3, 4)]
    assert all(b < u for b, u in zip(black, untrained))
    assert figures["ground truth, flat backgrounds"] < figures["ground truth"]
    assert "the last 2 steps get no gradient" in capsys.readouterr().out  # 10 steps, ratio 0.2: σ 0.146 and 0.007
    assert (tmp_path / "floor.json").is_file()
