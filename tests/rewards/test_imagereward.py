"""ImageReward, on a random checkpoint in the authors' layout, against BLIP's forward pass written
from its definition, through the real loading and preprocessing code."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_gym.rewards import make_reward
from diffusion_gym.rewards.http import make_reward_server
from diffusion_gym.rewards.imagereward import MEAN, STD
from tests.rewards.tiny_models import tiny_bert_tokenizer

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711])
V_WIDTH, V_LAYERS, PATCH, IMAGE, T_WIDTH, T_LAYERS, HEADS = 24, 2, 8, 32, 16, 2, 2


def random_checkpoint(vocab: int, seed: int = 0) -> dict:
    """Random tensors under ImageReward.pt's keys (blip.visual_encoder, blip.text_encoder, mlp)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.2  # noqa: E731
    ln = lambda prefix, width: {f"{prefix}.weight": 1 + r(width), f"{prefix}.bias": r(width)}  # noqa: E731
    lin = lambda prefix, o, i: {f"{prefix}.weight": r(o, i), f"{prefix}.bias": r(o)}  # noqa: E731
    v = "blip.visual_encoder."
    state = {v + "cls_token": r(1, 1, V_WIDTH), v + "pos_embed": r(1, (IMAGE // PATCH) ** 2 + 1, V_WIDTH),
             v + "patch_embed.proj.weight": r(V_WIDTH, 3, PATCH, PATCH), v + "patch_embed.proj.bias": r(V_WIDTH), **ln(v + "norm", V_WIDTH),
             "blip.text_proj.weight": r(8, T_WIDTH)}  # fmt: skip  (a BLIP part the reward does not use)
    for i in range(V_LAYERS):
        b = f"{v}blocks.{i}."
        state.update({**ln(b + "norm1", V_WIDTH), **ln(b + "norm2", V_WIDTH), **lin(b + "attn.qkv", 3 * V_WIDTH, V_WIDTH), **lin(b + "attn.proj", V_WIDTH, V_WIDTH),
                      **lin(b + "mlp.fc1", 48, V_WIDTH), **lin(b + "mlp.fc2", V_WIDTH, 48)})  # fmt: skip
    t = "blip.text_encoder."
    state.update({t + "embeddings.word_embeddings.weight": r(vocab, T_WIDTH), t + "embeddings.position_embeddings.weight": r(40, T_WIDTH), **ln(t + "embeddings.LayerNorm", T_WIDTH)})
    for i in range(T_LAYERS):
        b = f"{t}encoder.layer.{i}."
        for attention, source in (("attention", T_WIDTH), ("crossattention", V_WIDTH)):
            state.update({**lin(f"{b}{attention}.self.query", T_WIDTH, T_WIDTH), **lin(f"{b}{attention}.self.key", T_WIDTH, source),
                          **lin(f"{b}{attention}.self.value", T_WIDTH, source), **lin(f"{b}{attention}.output.dense", T_WIDTH, T_WIDTH),
                          **ln(f"{b}{attention}.output.LayerNorm", T_WIDTH)})  # fmt: skip
        state.update({**lin(b + "intermediate.dense", 32, T_WIDTH), **lin(b + "output.dense", T_WIDTH, 32), **ln(b + "output.LayerNorm", T_WIDTH)})
    for index, (o, i) in zip((0, 2, 4, 6, 7), [(1024, T_WIDTH), (128, 1024), (64, 128), (16, 64), (1, 16)]):
        state.update(lin(f"mlp.layers.{index}", o, i))
    return state


def blip_scores_by_definition(state, pixels, ids, mask) -> np.ndarray:
    """BLIP's ViT (pre-norm blocks, fused qkv, eps 1e-6) → its BERT (post-norm, self- then
    cross-attention to every image token) → the MLP on the [CLS] output → (r − mean) / std."""
    F = torch.nn.functional
    s = state

    def heads(x):
        return x.reshape(*x.shape[:2], HEADS, -1).transpose(1, 2)

    def attend(q, k, v, bias=0.0):
        weights = (heads(q) @ heads(k).transpose(-1, -2) / (q.shape[-1] // HEADS) ** 0.5 + bias).softmax(-1)
        return (weights @ heads(v)).transpose(1, 2).reshape(q.shape)

    with torch.no_grad():
        v = "blip.visual_encoder."
        x = F.conv2d(pixels, s[v + "patch_embed.proj.weight"], s[v + "patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
        x = torch.cat([s[v + "cls_token"].expand(len(x), 1, V_WIDTH), x], 1) + s[v + "pos_embed"]
        for i in range(V_LAYERS):
            b = f"{v}blocks.{i}."
            h = F.layer_norm(x, (V_WIDTH,), s[b + "norm1.weight"], s[b + "norm1.bias"], 1e-6)
            q, k, vv = F.linear(h, s[b + "attn.qkv.weight"], s[b + "attn.qkv.bias"]).chunk(3, -1)
            x = x + F.linear(attend(q, k, vv), s[b + "attn.proj.weight"], s[b + "attn.proj.bias"])
            h = F.layer_norm(x, (V_WIDTH,), s[b + "norm2.weight"], s[b + "norm2.bias"], 1e-6)
            x = x + F.linear(F.gelu(F.linear(h, s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"])), s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"])
        image = F.layer_norm(x, (V_WIDTH,), s[v + "norm.weight"], s[v + "norm.bias"], 1e-6)

        t = "blip.text_encoder."
        lin = lambda x, name: F.linear(x, s[name + ".weight"], s[name + ".bias"])  # noqa: E731
        norm = lambda x, name: F.layer_norm(x, (T_WIDTH,), s[name + ".weight"], s[name + ".bias"], 1e-12)  # noqa: E731
        y = norm(s[t + "embeddings.word_embeddings.weight"][ids] + s[t + "embeddings.position_embeddings.weight"][: ids.shape[1]], t + "embeddings.LayerNorm")
        padding = (1.0 - mask[:, None, None, :].float()) * -10000.0
        for i in range(T_LAYERS):
            b = f"{t}encoder.layer.{i}."
            a = f"{b}attention."
            y = norm(lin(attend(lin(y, a + "self.query"), lin(y, a + "self.key"), lin(y, a + "self.value"), padding), a + "output.dense") + y, a + "output.LayerNorm")
            c = f"{b}crossattention."
            y = norm(lin(attend(lin(y, c + "self.query"), lin(image, c + "self.key"), lin(image, c + "self.value")), c + "output.dense") + y, c + "output.LayerNorm")
            y = norm(lin(F.gelu(lin(y, b + "intermediate.dense")), b + "output.dense") + y, b + "output.LayerNorm")
        z = y[:, 0]
        for index in (0, 2, 4, 6, 7):  # dropouts are identities at evaluation
            z = lin(z, f"mlp.layers.{index}")
    return ((z.squeeze(-1).double() - MEAN) / STD).numpy()


def pixels_by_definition(image: np.ndarray, size: int = IMAGE) -> np.ndarray:
    """torchvision's Resize(size, BICUBIC) (short side to size, long side int(size·long/short)),
    CenterCrop(size) (offsets int(round((h − size) / 2))), ToTensor, Normalize(CLIP mean, std)."""
    h, w = image.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC), dtype=np.float64) / 255
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return ((resized[top : top + size, left : left + size] - OPENAI_MEAN) / OPENAI_STD).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    tokenizer = tiny_bert_tokenizer()
    tokenizer.save_pretrained(folder / "bert")
    state = random_checkpoint(len(tokenizer))
    torch.save(state, folder / "ImageReward.pt")
    return {"checkpoint": str(folder / "ImageReward.pt"), "tokenizer": str(folder / "bert"), "vision_heads": HEADS, "text_heads": HEADS}, state


def test_the_model_receives_the_authors_preprocessing_and_scores_as_blip(parts):
    options, state = parts
    reward_fn = make_reward("imagereward", **options, batch_size=2)
    rng = np.random.default_rng(0)
    # 3 and 7 pixels to crop: torchvision's round-half-to-even offsets (2, 4) differ from halving (1, 3)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((32, 35, 3), (39, 32, 3), (40, 67, 3))]
    prompts = ["a red cat riding a bike", "a dog playing chess", "what is this"]
    inputs = reward_fn.scorer.inputs(images, prompts)
    np.testing.assert_allclose(inputs["pixel_values"].numpy(), np.stack([pixels_by_definition(image) for image in images]), atol=1e-5, rtol=0)
    tokenizer = reward_fn.scorer.parts[0]
    vocab = tokenizer.get_vocab()
    expected_ids = [vocab["[CLS]"], *(vocab[w] for w in "a red cat riding a bike".split()), vocab["[SEP]"]]
    assert inputs["input_ids"].shape == (3, 35) and inputs["input_ids"][0, : len(expected_ids)].tolist() == expected_ids
    assert inputs["attention_mask"][0].sum() == len(expected_ids)
    rewards, info = reward_fn(images, prompts)
    expected = blip_scores_by_definition(state, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    assert rewards.dtype == np.float64 and rewards.shape == (3,) and np.ptp(expected) > 1e-3
    np.testing.assert_allclose(rewards, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(info["imagereward"], rewards)
    one_by_one = np.concatenate([reward_fn([image], [prompt])[0] for image, prompt in zip(images, prompts)])
    np.testing.assert_allclose(one_by_one, rewards, rtol=1e-6, atol=1e-9)


def test_a_missing_checkpoint_fails_when_the_reward_is_made(parts, tmp_path):
    options, _ = parts
    with pytest.raises(ValueError, match="ImageReward.pt"):
        make_reward("imagereward", tokenizer=options["tokenizer"])  # the published checkpoint: not here, no hub
    with pytest.raises(ValueError, match="does not exist"):
        make_reward("imagereward", checkpoint=str(tmp_path / "none.pt"), tokenizer=options["tokenizer"])
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not an ImageReward checkpoint"):
        make_reward("imagereward", checkpoint=str(tmp_path / "other.pt"), tokenizer=options["tokenizer"])(np.zeros((1, 32, 32, 3), np.uint8), ["a"])


def test_imagereward_served_over_http_gives_the_local_numbers(parts):
    options, _ = parts
    local = make_reward("imagereward", **options)
    server = make_reward_server(local, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        prompts = ["a red cat", "a dog", "a blue square"]
        remote_rewards, remote_info = make_reward("remote", url=f"http://127.0.0.1:{server.server_address[1]}")(images, prompts)
        local_rewards, _ = local(images, prompts)
        np.testing.assert_array_equal(remote_rewards, local_rewards)
        np.testing.assert_array_equal(remote_info["imagereward"], local_rewards)
    finally:
        server.shutdown()
