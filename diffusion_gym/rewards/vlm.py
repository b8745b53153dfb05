"""Vision-language models that answer a question about each image, for the prompt-alignment reward.

A VLM here is any callable `vlm(images (N, H, W, 3) uint8, question: str) -> list[str]`:

- `TransformersVLM`: LLaVA-1.5 (the paper's) or BLIP (a lighter captioner that ignores the
  question), loaded through transformers, lazily, once per process.
- `HTTPVLM`: a VLM served elsewhere (on other GPUs, as ddpo-pytorch served LLaVA). `serve_vlm`
  is the server side: `python -m diffusion_gym.rewards.vlm --model llava-hf/llava-1.5-7b-hf`.

The HTTP protocol is one JSON POST: {"question": str, "images": [base64 PNG, ...]} →
{"answers": [str, ...]}.
"""

from __future__ import annotations

import functools
from http.server import ThreadingHTTPServer
from typing import Callable, Literal

import numpy as np
import torch

from diffusion_gym.models.hub import check_available, how_to_download, load_offline_first
from diffusion_gym.rewards.base import check_images
from diffusion_gym.rewards.http import decode_png, encode_png, make_json_server, post_json

VLM = Callable[[np.ndarray, str], list[str]]
LLAVA_MODEL = "llava-hf/llava-1.5-7b-hf"
BLIP_MODEL = "Salesforce/blip-image-captioning-large"
VLM_KINDS = ("llava", "blip")


class TransformersVLM:
    """A LLaVA or BLIP model from the hub or a local folder, answering in batches.

    Args:
        model: hub id or local folder (model and processor).
        kind: "llava" (answers the question) or "blip" (captions the image).
        device: where it runs.
        dtype: its weights' dtype.
        max_new_tokens: the answer's length limit.
        batch_size: images per generate call.
    """

    def __init__(
        self,
        model: str = LLAVA_MODEL,
        kind: Literal["llava", "blip"] = "llava",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_new_tokens: int = 64,
        batch_size: int = 8,
    ):
        if kind not in VLM_KINDS:
            raise ValueError(f"kind must be one of {VLM_KINDS}, got {kind!r}.")
        self.model_name, self.kind, self.device, self.dtype = str(model), kind, torch.device(device), dtype
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        check_available(self.model_name, _how_to_provide(self.model_name))  # it loads on the first call

    @functools.cached_property
    def parts(self) -> tuple:
        """(processor, model), loaded once."""
        processor, model = _load_vlm(self.model_name, self.kind)
        return processor, model.to(self.device, self.dtype).eval()

    def prompt(self, question: str) -> str | None:
        """The text given to the model with each image (None for a captioner)."""
        if self.kind == "blip":
            return None
        processor, _ = self.parts
        if getattr(processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return processor.apply_chat_template(conversation, add_generation_prompt=True)
        return f"USER: {processor.image_token}\n{question} ASSISTANT:"  # LLaVA-1.5's format

    @torch.no_grad()
    def __call__(self, images: np.ndarray, question: str) -> list[str]:
        check_images(images)
        processor, model = self.parts
        text = self.prompt(question)
        answers = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            kwargs = {"text": [text] * len(chunk)} if text is not None else {}
            inputs = processor(images=chunk, return_tensors="pt", padding=True, **kwargs).to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            if text is not None:  # decoder-only: the output repeats the input first
                output = output[:, inputs["input_ids"].shape[1] :]
            answers += [a.strip() for a in processor.batch_decode(output, skip_special_tokens=True)]
        return answers


@functools.lru_cache(maxsize=None)
def _load_vlm(name: str, kind: str):
    from transformers import AutoProcessor, BlipForConditionalGeneration, LlavaForConditionalGeneration

    model_class = LlavaForConditionalGeneration if kind == "llava" else BlipForConditionalGeneration

    def load(local_files_only: bool):
        processor = AutoProcessor.from_pretrained(name, local_files_only=local_files_only)
        return processor, model_class.from_pretrained(name, local_files_only=local_files_only)

    return load_offline_first(
        name,
        load,
        _how_to_provide(name),
    )


def _how_to_provide(name: str) -> str:
    return (
        f"{how_to_download(name, 'vlm')[:-1]}, "
        "or serve the VLM on another machine (`python -m diffusion_gym.rewards.vlm`) and pass vlm_kind='http', vlm='http://HOST:PORT'."
    )


class HTTPVLM:
    """A VLM behind an HTTP endpoint (see the module docstring for the protocol)."""

    def __init__(self, url: str, timeout: float = 600.0):
        self.url, self.timeout = url, timeout

    def __call__(self, images: np.ndarray, question: str) -> list[str]:
        check_images(images)
        answer = post_json(self.url, {"question": question, "images": [encode_png(image) for image in images]}, self.timeout, "The VLM server")
        if "answers" not in answer:
            raise RuntimeError(f"The VLM server at {self.url} answered without 'answers': {str(answer)[:200]}; is `python -m diffusion_gym.rewards.vlm` running there?")
        answers = answer["answers"]
        if len(answers) != len(images):
            raise RuntimeError(f"The VLM server at {self.url} returned {len(answers)} answers for {len(images)} images.")
        return [str(a) for a in answers]


def make_server(vlm: VLM, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server answering for `vlm` (call `serve_forever()` on it; port 0 picks a free port)."""

    def handle(request: dict) -> dict:
        return {"answers": vlm(np.stack([decode_png(data) for data in request["images"]]), request["question"])}

    return make_json_server(handle, host, port)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve a VLM for the prompt-alignment reward over HTTP.")
    parser.add_argument("--model", default=LLAVA_MODEL)
    parser.add_argument("--kind", default="llava", choices=VLM_KINDS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    server = make_server(TransformersVLM(args.model, args.kind, args.device, dtype), args.host, args.port)
    print(f"serving {args.model} on {args.host}:{server.server_address[1]}")
    server.serve_forever()


if __name__ == "__main__":
    main()

