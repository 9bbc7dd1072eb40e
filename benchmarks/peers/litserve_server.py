"""The peer for issue 27's comparison: LitServe (Lightning's FastAPI-based server with dynamic batching) serving the
same exported ONNX model under ONNX Runtime with imagefit's own preprocessing and predictor, so the two servers differ
only in the serving framework. Requests in LitServe's own idiom, JSON: POST /predict {"images": [base64, ...]} (a
multipart form cannot cross LitServe 0.2's process queue: its UploadFiles fail to pickle), answered like `imagefit
serve`, the top-k classes per image.

    python benchmarks/peers/litserve_server.py RUN_DIR PORT [--max-batch 32] [--batch-timeout 0.002] [--threads 2]
"""

from __future__ import annotations

import argparse
import base64

import litserve as ls
import torch


class ImagefitLitAPI(ls.LitAPI):
    def __init__(self, run: str, threads: int, tta: str, **kwargs):
        super().__init__(**kwargs)
        self.run, self.threads, self.tta = run, threads, tta

    def setup(self, device):
        from imagefit.deploy.inference import load_predictor
        self.predictor = load_predictor(self.run, "onnx", self.threads, spin=False)

    def decode_request(self, request):
        blobs = [base64.b64decode(b) for b in request["images"]]
        names = [f"image {i + 1}" for i in range(len(blobs))]
        return names, torch.stack([self.predictor.preprocessing.decode(b) for b in blobs])

    def batch(self, inputs):
        return [n for n, _ in inputs], torch.cat([x for _, x in inputs]), [len(x) for _, x in inputs]

    def predict(self, batch):
        names, images, sizes = batch
        return names, self.predictor.probabilities(images, self.tta).split(sizes), sizes

    def unbatch(self, output):
        names, probs, _ = output
        return list(zip(names, probs))

    def encode_response(self, output):
        from imagefit.deploy.inference import top_classes
        names, probs = output
        tops = top_classes(probs, self.predictor.classes, 3)
        return {"predictions": [{"file": n, "top": t} for n, t in zip(names, tops)], "backend": "litserve+onnx"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("port", type=int)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--batch-timeout", type=float, default=0.002)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tta", default="none", help="test-time augmentation, as imagefit serve --tta (default: none)")
    p.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ queue between API server and worker")
    p.add_argument("--api-servers", type=int, default=1)
    args = p.parse_args()
    api = ImagefitLitAPI(args.run, args.threads, args.tta, max_batch_size=args.max_batch, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60, fast_queue=args.fast_queue)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=args.api_servers, generate_client_file=False,
               log_level="warning")


if __name__ == "__main__":
    main()
