"""PickScore, CLIPScore, the weighted mix and rewards served over HTTP, on tiny random CLIPs of
the classes the real rewards load, through the real loading and preprocessing code."""

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_gym.rewards import make_reward
from diffusion_gym.rewards.http import make_reward_server, post_json
from tests.rewards.tiny_models import tiny_clip_pair

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return str(tiny_clip_pair(tmp_path_factory.mktemp("pair") / "clip", logit_scale=3.0))


def hand_built_images():
    """A horizontal gradient of 40×64, a vertical one of 75×50, a checkerboard of 32×32."""
    gradient = np.broadcast_to(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (40, 64, 3)).copy()
    gradient[..., 1] = 128
    vertical = np.broadcast_to(np.linspace(255, 0, 75, dtype=np.uint8)[:, None, None], (75, 50, 3)).copy()
    checker = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    return [gradient, vertical, checker]


def clip_pixels_by_definition(image: np.ndarray, size: int = 32) -> np.ndarray:
    """CLIP's preprocessing as its authors define it: resize the short side to `size` (bicubic),
    centre-crop size × size, scale to [0, 1], normalise with the OpenAI mean and std; (3, size, size)."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    resized = np.asarray(Image.fromarray(image).resize((max(size, int(w * scale)), max(size, int(h * scale))), Image.BICUBIC), dtype=np.float64)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    crop = resized[top : top + size, left : left + size] / 255
    return ((crop - OPENAI_MEAN) / OPENAI_STD).transpose(2, 0, 1)


def received_inputs(scorer, images, prompts):
    """What the CLIPModel's towers receive when the reward scores these images (forward hooks)."""
    _, model = scorer.parts
    seen = {}

    def keep(key, name):
        def hook(module, args, kwargs):
            seen.setdefault(key, kwargs.get(name, args[0] if args else None))

        return hook

    hooks = [
        model.vision_model.register_forward_pre_hook(keep("pixels", "pixel_values"), with_kwargs=True),
        model.text_model.register_forward_pre_hook(keep("ids", "input_ids"), with_kwargs=True),
    ]
    try:
        scorer.cosine(images, prompts)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def cosine_by_hand(folder, pixels, ids) -> np.ndarray:
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output).double()
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output).double()
    return (image @ text.T).diagonal().numpy() / (image.norm(dim=-1) * text.norm(dim=-1)).numpy()


@pytest.mark.parametrize("name, template", [("pickscore", "{}"), ("clipscore", "A photo depicts {}")])
def test_the_model_receives_the_authors_preprocessing(clip_folder, name, template):
    options = {"model": clip_folder, "processor": clip_folder} if name == "pickscore" else {"model": clip_folder}
    reward_fn = make_reward(name, **options)
    images = hand_built_images()
    seen = received_inputs(reward_fn.scorer, images, ["a red cat", "a dog", "a blue square"])
    expected = np.stack([clip_pixels_by_definition(image) for image in images])
    np.testing.assert_allclose(seen["pixels"].numpy(), expected, atol=1e-5, rtol=0)
    tokenizer = reward_fn.scorer.parts[0].tokenizer
    ids = seen["ids"][0].tolist()
    # CLIP's text: lower case, words split on spaces, BPE (here no merges: a token per character,
    # the word's last marked "</w>"), between start and end tokens, padded to 77
    vocab = tokenizer.get_vocab()
    words = template.format("a red cat").lower().split()
    expected = [vocab[c] for word in words for c in [*word[:-1], word[-1] + "</w>"]]
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id
    assert ids[1 : 1 + len(expected)] == expected and ids[1 + len(expected)] == tokenizer.eos_token_id


def test_pickscore_is_the_logit_scale_times_the_cosine_and_batch_invariant(clip_folder):
    reward_fn = make_reward("pickscore", model=clip_folder, processor=clip_folder, batch_size=2)
    images, prompts = hand_built_images(), ["a red cat", "a dog", "a blue square"]
    rewards, info = reward_fn(images, prompts)
    seen = received_inputs(make_reward("pickscore", model=clip_folder, processor=clip_folder, batch_size=3).scorer, images, prompts)
    expected = np.exp(3.0) * cosine_by_hand(clip_folder, seen["pixels"], seen["ids"])
    assert rewards.dtype == np.float64 and rewards.shape == (3,) and np.ptp(expected) > 1e-3
    np.testing.assert_allclose(rewards, expected, rtol=1e-5)
    np.testing.assert_array_equal(info["pickscore"], rewards)
    one_by_one = np.concatenate([reward_fn([image], [prompt])[0] for image, prompt in zip(images, prompts)])
    np.testing.assert_allclose(one_by_one, rewards, rtol=1e-6)


def test_clipscore_is_the_weighted_clipped_cosine(clip_folder):
    reward_fn = make_reward("clipscore", model=clip_folder, weight=2.5)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    prompts = ["a red cat", "a dog", "a blue square", "noise", "the horse", "x"]
    rewards, info = reward_fn(images, prompts)
    cosine = info["cosine"]
    seen = received_inputs(reward_fn.scorer, images, prompts)
    np.testing.assert_allclose(cosine, cosine_by_hand(clip_folder, seen["pixels"], seen["ids"]), rtol=1e-5)
    np.testing.assert_allclose(rewards, 2.5 * np.maximum(cosine, 0))
    assert rewards.dtype == np.float64 and (rewards >= 0).all()
    one_by_one = np.concatenate([reward_fn(images[i : i + 1], prompts[i : i + 1])[0] for i in range(6)])
    np.testing.assert_allclose(one_by_one, rewards, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name, option", [("pickscore", "model='DIR'"), ("clipscore", "model='DIR'")])
def test_a_missing_model_fails_when_the_reward_is_made(name, option):
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        make_reward(name)  # the published weights: not here, and no hub
    assert time.perf_counter() - start < 10 and option in str(error.value) and "huggingface-cli download" in str(error.value)


def test_weighted_mixes_parts_by_hand_computed_values(clip_folder):
    images = np.stack(hand_built_images()[2:] * 2 + [np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)])
    prompts = ["a cat", "a dog", "a bird"]
    jpeg, _ = make_reward("jpeg_compressibility", quality=50)(images, prompts)
    clip, _ = make_reward("clipscore", model=clip_folder)(images, prompts)
    spec = "jpeg_compressibility=2, clipscore=-0.5"
    options = {"jpeg_compressibility.quality": "50", "clipscore.model": clip_folder}
    rewards, info = make_reward("weighted", rewards=spec, **options)(images, prompts)
    np.testing.assert_allclose(rewards, 2 * jpeg - 0.5 * clip)
    np.testing.assert_array_equal(info["jpeg_compressibility"], jpeg)
    assert {"jpeg_compressibility", "clipscore", "clipscore.cosine", "clipscore.clipscore"} <= set(info)
    np.testing.assert_array_equal(info["clipscore"], clip)
    normalized, _ = make_reward("weighted", rewards=spec, normalize="true", **options)(images, prompts)
    z = lambda r: (r - r.mean()) / r.std() if r.std() > 0 else np.zeros_like(r)  # noqa: E731
    np.testing.assert_allclose(normalized, 2 * z(jpeg) - 0.5 * z(clip))
    _, normalized_info = make_reward("weighted", rewards=spec, normalize="true", **options)(images, prompts)
    np.testing.assert_allclose(normalized_info["unnormalized"], 2 * jpeg - 0.5 * clip)
    jpeg_only, _ = make_reward("weighted", rewards={"jpeg_compressibility": 1.0}, normalize=True)(images[:2], prompts[:2])
    np.testing.assert_array_equal(jpeg_only, 0.0)  # two equal images: no spread, no signal
    with pytest.raises(ValueError, match="needs at least 2 images"):
        make_reward("weighted", rewards={"jpeg_compressibility": 1.0}, normalize=True)(images[:1], prompts[:1])
    for bad, needle in (
        ({"rewards": "pickscore"}, "name=weight"),
        ({"rewards": "nope=1"}, "Unknown rewards ['nope']"),
        ({"rewards": "jpeg_compressibility=1", "clipscore.model": "x"}, "'part.option' with a part of ['jpeg_compressibility']"),
        ({"rewards": "jpeg_compressibility=high"}, "must be a number"),
    ):
        with pytest.raises(ValueError, match=__import__("re").escape(needle)):
            make_reward("weighted", **bad)


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "hpsv2", "weighted", "jpeg_compressibility"])
def test_a_reward_served_over_http_gives_the_local_numbers(clip_folder, hps_parts, name):
    options = {
        "pickscore": {"model": clip_folder, "processor": clip_folder},
        "hpsv2": {"checkpoint": hps_parts[1], "clip": hps_parts[0]},
        "clipscore": {"model": clip_folder},
        "weighted": {"rewards": "clipscore=1,jpeg_compressibility=0.1", "clipscore.model": clip_folder},
        "jpeg_compressibility": {},
    }[name]
    local = make_reward(name, **options)
    server = make_reward_server(local, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        prompts = ["a red cat", "a dog", "a blue square"]
        (remote_rewards, remote_info), (local_rewards, local_info) = make_reward("remote", url=url)(images, prompts), local(images, prompts)
        np.testing.assert_array_equal(remote_rewards, local_rewards)
        assert set(remote_info) == {k for k, v in local_info.items() if np.ndim(v) >= 1}
        for key in remote_info:
            np.testing.assert_array_equal(remote_info[key], np.asarray(local_info[key]))
        with pytest.raises(RuntimeError, match="The reward server at .* refused the request: .*error"):
            post_json(url, {"images": ["not a PNG"], "prompts": ["a cat"]}, 10, "The reward server")
    finally:
        server.shutdown()


def test_the_train_and_bench_command_lines_take_a_registered_reward_and_its_options(clip_folder, tmp_path):
    import gymnasium as gym
    import tyro

    from agents.train import PRESETS, TrainConfig
    from benchmarks.run import BenchConfig, cell_config

    config = tyro.extras.overridable_config_cli(
        PRESETS, args=["embedded-ddpo-is", "--reward", "clipscore", "--reward-kwargs", "model", clip_folder, "weight", "100", "--model", "tiny-random"]
    )
    assert isinstance(config, TrainConfig) and config.reward_kwargs == {"model": clip_folder, "weight": "100"}
    envs = gym.make_vec(config.env_id, num_envs=2, model=config.model, device="cpu", num_inference_steps=2, **{k: v for k, v in config.env_kwargs().items() if k != "num_inference_steps"})
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    rewards, _ = envs.unwrapped.reward_fn(images, ["a cat", "a dog"])
    np.testing.assert_allclose(rewards, 100 / 2.5 * make_reward("clipscore", model=clip_folder)(images, ["a cat", "a dog"])[0])
    bench = BenchConfig(train={"reward": "pickscore", "reward_kwargs.model": clip_folder, "reward_kwargs.processor": clip_folder}, output_dir=tmp_path)
    cell = cell_config(bench, "DiffusionCompressibility-v0", "ddpo-is", 0)
    assert cell.reward == "pickscore" and cell.reward_kwargs == {"model": clip_folder, "processor": clip_folder}


# ---------------------------------------------------------------- HPSv2: an open_clip checkpoint
WIDTH, HEADS, PATCH, GRID, EMBED = 16, 2, 8, 4, 12


def random_open_clip_state(vocab: int, seed: int = 0) -> dict:
    """Random weights in open_clip's CLIP layout (what HPS_v2.1_compressed.pt holds), the tiny size."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    state = {"visual.class_embedding": r(WIDTH), "visual.positional_embedding": r(GRID * GRID + 1, WIDTH), "visual.proj": r(WIDTH, EMBED),
             "visual.conv1.weight": r(WIDTH, 3, PATCH, PATCH), "token_embedding.weight": r(vocab, WIDTH), "positional_embedding": r(77, WIDTH),
             "text_projection": r(WIDTH, EMBED), "logit_scale": torch.tensor(4.6)}  # fmt: skip
    for norm in ("visual.ln_pre", "visual.ln_post", "ln_final"):
        state[f"{norm}.weight"], state[f"{norm}.bias"] = 1 + r(WIDTH), r(WIDTH)
    for prefix, layers in (("visual.transformer.resblocks.", 2), ("transformer.resblocks.", 1)):
        for i in range(layers):
            p = f"{prefix}{i}."
            state.update({p + "attn.in_proj_weight": r(3 * WIDTH, WIDTH), p + "attn.in_proj_bias": r(3 * WIDTH), p + "attn.out_proj.weight": r(WIDTH, WIDTH),
                          p + "attn.out_proj.bias": r(WIDTH), p + "mlp.c_fc.weight": r(32, WIDTH), p + "mlp.c_fc.bias": r(32),
                          p + "mlp.c_proj.weight": r(WIDTH, 32), p + "mlp.c_proj.bias": r(WIDTH)})  # fmt: skip
            for norm in ("ln_1", "ln_2"):
                state[f"{p}{norm}.weight"], state[f"{p}{norm}.bias"] = 1 + r(WIDTH), r(WIDTH)
    return state


def open_clip_cosine(state, pixels, ids) -> np.ndarray:
    """open_clip's CLIP forward pass, written from its definition: residual blocks x + attn(ln_1 x),
    x + mlp(ln_2 x) with GELU; the image's class token after ln_post times proj; the text's
    end token (the largest id) after ln_final times text_projection; cosine of the two."""
    F = torch.nn.functional

    def blocks(x, prefix, count, mask=None):
        for i in range(count):
            p = f"{prefix}{i}."
            h = F.layer_norm(x, (WIDTH,), state[p + "ln_1.weight"], state[p + "ln_1.bias"]).transpose(0, 1)
            attended, _ = F.multi_head_attention_forward(
                h, h, h, WIDTH, HEADS, state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"], None, None, False, 0.0,
                state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"], training=False, need_weights=False, attn_mask=mask,
            )  # fmt: skip
            x = x + attended.transpose(0, 1)
            h = F.layer_norm(x, (WIDTH,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
            x = x + F.linear(F.gelu(F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])), state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
        return x

    with torch.no_grad():
        x = F.conv2d(pixels, state["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
        x = torch.cat([state["visual.class_embedding"].expand(len(x), 1, WIDTH), x], 1) + state["visual.positional_embedding"]
        x = blocks(F.layer_norm(x, (WIDTH,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"]), "visual.transformer.resblocks.", 2)
        image = F.layer_norm(x[:, 0], (WIDTH,), state["visual.ln_post.weight"], state["visual.ln_post.bias"]) @ state["visual.proj"]
        causal = torch.full((77, 77), float("-inf")).triu(1)
        t = blocks(state["token_embedding.weight"][ids] + state["positional_embedding"], "transformer.resblocks.", 1, causal)
        t = F.layer_norm(t, (WIDTH,), state["ln_final.weight"], state["ln_final.bias"])
        text = t[torch.arange(len(ids)), ids.argmax(-1)] @ state["text_projection"]
    image, text = image.double(), text.double()
    return ((image / image.norm(dim=-1, keepdim=True)) * (text / text.norm(dim=-1, keepdim=True))).sum(-1).numpy()


def hps_pixels_by_definition(image: np.ndarray, size: int = 32) -> np.ndarray:
    """HPSv2's preprocess_val: the long side resized to `size` (bicubic), the image centred on a
    black square, scaled to [0, 1], normalised with the OpenAI mean and std."""
    h, w = image.shape[:2]
    new_h, new_w = round(h * size / max(h, w)), round(w * size / max(h, w))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC), dtype=np.float64)
    square = np.zeros((size, size, 3))
    top, left = (size - new_h) // 2, (size - new_w) // 2
    square[top : top + new_h, left : left + new_w] = resized
    return ((square / 255 - OPENAI_MEAN) / OPENAI_STD).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def hps_parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hps")
    clip = tiny_clip_pair(folder / "laion", hidden_act="gelu")
    from transformers import CLIPTokenizer

    state = random_open_clip_state(len(CLIPTokenizer.from_pretrained(clip)))
    torch.save({"state_dict": state}, folder / "HPS_v2.1_compressed.pt")
    return str(clip), str(folder / "HPS_v2.1_compressed.pt"), state


def test_hpsv2_preprocesses_as_its_authors_and_scores_as_open_clip(hps_parts):
    clip, checkpoint, state = hps_parts
    reward_fn = make_reward("hpsv2", checkpoint=checkpoint, clip=clip, batch_size=2)
    images, prompts = hand_built_images(), ["a red cat", "a dog", "a blue square"]
    seen = received_inputs(make_reward("hpsv2", checkpoint=checkpoint, clip=clip, batch_size=3).scorer, images, prompts)
    expected_pixels = np.stack([hps_pixels_by_definition(image) for image in images])
    np.testing.assert_allclose(seen["pixels"].numpy(), expected_pixels, atol=1e-5, rtol=0)
    assert (expected_pixels[0, :, :6] == ((0 - OPENAI_MEAN) / OPENAI_STD)[:, None, None]).all()  # the 40×64 image padded with black rows
    rewards, info = reward_fn(images, prompts)
    expected = open_clip_cosine(state, seen["pixels"], seen["ids"])
    assert rewards.dtype == np.float64 and rewards.shape == (3,) and np.ptp(expected) > 1e-3
    np.testing.assert_allclose(rewards, expected, rtol=1e-4)
    np.testing.assert_array_equal(info["hpsv2"], rewards)
    one_by_one = np.concatenate([reward_fn([image], [prompt])[0] for image, prompt in zip(images, prompts)])
    np.testing.assert_allclose(one_by_one, rewards, rtol=1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        make_reward("hpsv2", checkpoint="/nonexistent/HPS_v2.1_compressed.pt", clip=clip)
    with pytest.raises(ValueError, match="HPS_v2.1_compressed.pt"):
        make_reward("hpsv2", clip=clip)  # the published checkpoint: not here, no hub


@pytest.mark.parametrize("name, needle", [("pickscore", "PickScore_v1"), ("clipscore", "clip-vit-base-patch32"), ("hpsv2", "HPS_v2.1_compressed.pt"), ("imagereward", "ImageReward.pt")])
def test_an_env_with_a_missing_reward_model_fails_when_made(name, needle):
    import gymnasium as gym

    with pytest.raises(ValueError, match=needle):
        gym.make_vec("DiffusionCompressibility-v0", num_envs=1, model="tiny-random", device="cpu", num_inference_steps=2, reward=name)
