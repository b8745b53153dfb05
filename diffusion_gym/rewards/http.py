"""Rewards served over HTTP, for reward models too large for the training machine.

Server, on the machine with the model (any registered reward and its options):

    python -m diffusion_gym.rewards.http --reward pickscore --option model=/models/pickscore --port 8000

Client, in training: the registered reward `remote` (`make_reward("remote", url="http://HOST:8000")`,
or `--reward remote --reward-kwargs url http://HOST:8000`), the same reward over the wire.

The protocol is one JSON POST: {"images": [base64 PNG, ...], "prompts": [str, ...]} →
{"rewards": [float, ...], "info": {key: [one value per image, ...]}}; an error answers
{"error": str} with status 400, and the server keeps serving. PNG is lossless, so a reward
served remotely sees the very pixels it would see locally.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from diffusion_gym.rewards.base import check_images


def encode_png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def make_json_server(handle: Callable[[dict], dict], host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server that answers each JSON POST with `handle(request)`, one request at a time
    (a model is loaded and run once, not by several threads at once); call `serve_forever()` on
    it; port 0 picks a free port. A malformed request answers {"error": ...} with status 400,
    a failure of `handle` itself 500; the server keeps serving."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    body, status = json.dumps(handle(request)).encode(), 200
            except (KeyError, TypeError, ValueError) as error:  # a request that does not follow the protocol (bad JSON, PNG, fields)
                body, status = json.dumps({"error": repr(error)}).encode(), 400
            except Exception as error:
                body, status = json.dumps({"error": repr(error)}).encode(), 500
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # quiet
            pass

    return ThreadingHTTPServer((host, port), Handler)


def post_json(url: str, request: dict, timeout: float, what: str) -> dict:
    """POST `request` to `url`; RuntimeError naming `what` and the server's reason if it fails."""
    data = json.dumps(request).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}), timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        reason = error.read().decode(errors="replace")
        raise RuntimeError(f"{what} at {url} {'refused the request' if error.code < 500 else 'failed on the request'}: {reason}") from error
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as error:
        raise RuntimeError(f"{what} at {url} did not answer ({error}); is its server running there?") from error


def make_reward_server(reward_fn: Callable, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server that scores with `reward_fn` (see the module docstring for the protocol)."""

    def handle(request: dict) -> dict:
        images = np.stack([decode_png(data) for data in request["images"]])
        rewards, info = reward_fn(images, list(request["prompts"]))
        per_image = {k: np.asarray(v).tolist() for k, v in info.items() if np.ndim(v) >= 1 and len(v) == len(images)}
        return {"rewards": np.asarray(rewards, dtype=np.float64).tolist(), "info": per_image}

    return make_json_server(handle, host, port)


def remote(url: str, timeout: float = 600.0) -> Callable[[np.ndarray, Sequence[str]], tuple[np.ndarray, dict]]:
    """Reward = what the reward server at `url` answers (`python -m diffusion_gym.rewards.http`)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {url!r}; start the server with `python -m diffusion_gym.rewards.http`.")

    def reward(images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict]:
        check_images(images)
        answer = post_json(url, {"images": [encode_png(image) for image in images], "prompts": list(prompts)}, timeout, "The reward server")
        if "rewards" not in answer:
            raise RuntimeError(f"The reward server at {url} answered without 'rewards': {str(answer)[:200]}; is `python -m diffusion_gym.rewards.http` running there?")
        rewards = np.asarray(answer["rewards"], dtype=np.float64)
        info: dict[str, Any] = {k: np.asarray(v) for k, v in answer.get("info", {}).items()}
        return rewards, info

    return reward


def main() -> None:
    import argparse

    import torch

    from diffusion_gym.rewards import REWARDS, make_reward

    parser = argparse.ArgumentParser(description="Serve a registered reward over HTTP (the client: make_reward('remote', url=...)).")
    parser.add_argument("--reward", required=True, choices=sorted(REWARDS))
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="an option of the reward (repeatable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    bad = [option for option in args.option if "=" not in option]
    if bad:
        parser.error(f"--option takes NAME=VALUE, got {bad}")
    options = dict(option.split("=", 1) for option in args.option)
    server = make_reward_server(make_reward(args.reward, device=args.device, **options), args.host, args.port)
    print(f"serving the reward {args.reward} on {args.host}:{server.server_address[1]}")
    server.serve_forever()


if __name__ == "__main__":
    main()
