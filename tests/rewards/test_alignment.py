"""Prompt alignment: BERTScore recall (by hand and against the bert-score package), a tiny random
LLaVA end to end, a VLM over HTTP, and the offline toy-world version."""

import threading
import time

import numpy as np
import pytest
import torch

from diffusion_gym.embedded import world
from diffusion_gym.rewards import make_reward
from diffusion_gym.rewards.bertscore import BERTScorer, greedy_match, load_bertscorer
from diffusion_gym.rewards.vlm import HTTPVLM, TransformersVLM, make_server
from tests.rewards.tiny_models import tiny_bert, tiny_llava

CANDIDATES = ["a red cat riding a bike", "a dog", "the horse is playing chess on a flat background", "zebra"]
REFERENCES = ["a cat riding a bike", "a monkey washing dishes", "a horse playing chess", "a bird"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return tiny_llava(tmp_path_factory.mktemp("llava") / "llava")


def test_greedy_match_equals_a_hand_computation():
    rng = np.random.default_rng(0)
    candidate, reference = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 3, 3))
    candidate_mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    weights = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])  # 0: special tokens and padding
    expected = []
    for b in range(2):
        total = 0.0
        for i in range(3):
            r = reference[b, i] / np.linalg.norm(reference[b, i])
            best = max(r @ (candidate[b, j] / np.linalg.norm(candidate[b, j])) for j in range(4) if candidate_mask[b, j])
            total += weights[b, i] * best
        expected.append(total / weights[b].sum())
    recall = greedy_match(torch.tensor(candidate), torch.tensor(candidate_mask), torch.tensor(reference), torch.tensor(weights))
    np.testing.assert_allclose(recall.numpy(), expected, rtol=1e-12)


def test_bertscore_recall_matches_the_bert_score_package_on_the_same_model(bert):
    bert_score = pytest.importorskip("bert_score")
    ours = load_bertscorer(str(bert), layer=2).recall(CANDIDATES, REFERENCES)
    _, reference_recall, _ = bert_score.score(CANDIDATES, REFERENCES, model_type=str(bert), num_layers=2, batch_size=2)
    assert ours.std() > 0.01  # the texts differ: so do their scores
    np.testing.assert_allclose(ours.numpy(), reference_recall.numpy(), atol=1e-5)
    assert abs(float(load_bertscorer(str(bert), layer=2).recall(["a cat"], ["a cat"])[0]) - 1) < 1e-5


def test_bertscore_rejects_a_layer_the_model_does_not_have(bert):
    from transformers import AutoModel, AutoTokenizer

    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\]"):
        BERTScorer(AutoModel.from_pretrained(bert), AutoTokenizer.from_pretrained(bert), layer=3)


def test_alignment_with_a_tiny_random_llava_runs_end_to_end(llava, bert):
    reward_fn = make_reward("prompt_alignment", vlm=str(llava), bertscore_model=str(bert), bertscore_layer=2, batch_size=2)
    images = np.random.default_rng(0).integers(0, 256, size=(3, 24, 20, 3), dtype=np.uint8)
    prompts = ["a cat riding a bike", "a dog playing chess", "a horse washing dishes"]
    rewards, info = reward_fn(images, prompts)
    assert rewards.shape == (3,) and np.isfinite(rewards).all() and (np.abs(rewards) <= 1 + 1e-6).all()
    assert len(info["answers"]) == 3 and all(isinstance(a, str) for a in info["answers"])
    # the reward is the recall of exactly those answers
    np.testing.assert_allclose(rewards, load_bertscorer(str(bert), 2).recall(info["answers"], prompts).numpy(), atol=1e-6)
    # LLaVA-1.5's prompt holds the image token and the question
    vlm = TransformersVLM(str(llava))
    assert vlm.prompt("what is happening in this image?") == "USER: <image>\nwhat is happening in this image? ASSISTANT:"


def test_a_vlm_served_over_http_gives_the_same_answers_as_in_process(bert):
    def fake_vlm(images: np.ndarray, question: str) -> list[str]:  # answers from the pixels it received
        return [f"a {'red' if image[..., 0].mean() > 128 else 'blue'} cat" for image in images]

    server = make_server(fake_vlm, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
        images[0, ..., 0] = 255
        assert HTTPVLM(url)(images, "what?") == ["a red cat", "a blue cat"]
        reward_fn = make_reward("prompt_alignment", vlm=url, vlm_kind="http", bertscore_model=str(bert), bertscore_layer=2)
        rewards, info = reward_fn(images, ["a red cat", "a red cat"])
        assert info["answers"] == ["a red cat", "a blue cat"]
        assert abs(rewards[0] - 1) < 1e-5 and rewards[1] < rewards[0] - 0.01
    finally:
        server.shutdown()
    with pytest.raises(RuntimeError, match="did not answer"):
        HTTPVLM(url, timeout=5)(images, "what?")


def test_a_missing_vlm_names_the_model_and_how_to_provide_it_when_the_reward_is_made():
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        make_reward("prompt_alignment", vlm="diffusion-gym-tests/no-such-llava")
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert "no-such-llava" in message and "vlm='DIR'" in message and "vlm_kind='http'" in message


def test_embedded_alignment_is_high_on_true_renders_and_lower_on_shuffled_prompts():
    rng = np.random.default_rng(0)
    batch = world.sample_batch(256, rng, world.TRAIN + world.HELD_OUT)
    reward_fn = make_reward("embedded_alignment")
    rewards, info = reward_fn(batch.images, batch.prompts)
    shuffled = [batch.prompts[i] for i in rng.permutation(len(batch.prompts))]
    shuffled_rewards, _ = reward_fn(batch.images, shuffled)
    print(f"embedded alignment: true prompts {rewards.mean():.3f}, shuffled prompts {shuffled_rewards.mean():.3f}")
    assert rewards.mean() >= 0.9
    assert shuffled_rewards.mean() < rewards.mean() - 0.2
    # a caption that reads the image right scores 1 against its prompt
    right = np.array([a == p for a, p in zip(info["answers"], batch.prompts)])
    assert right.mean() > 0.9 and np.allclose(rewards[right], 1, atol=1e-5)


def test_a_tiny_random_blip_captions_through_the_same_reward(tmp_path, bert):
    from tests.rewards.tiny_models import tiny_blip

    blip = tiny_blip(tmp_path / "blip")
    reward_fn = make_reward("prompt_alignment", vlm=str(blip), vlm_kind="blip", bertscore_model=str(bert), bertscore_layer=2)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 20, 24, 3), dtype=np.uint8)
    rewards, info = reward_fn(images, ["a cat riding a bike", "a dog"])
    assert rewards.shape == (2,) and np.isfinite(rewards).all() and all(isinstance(a, str) for a in info["answers"])
    assert TransformersVLM(str(blip), kind="blip").prompt("what?") is None  # a captioner is not asked the question
