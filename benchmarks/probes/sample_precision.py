"""Probe: does bfloat16 sampling cost image quality? The same noise drawn through a diffusion run's EMA UNet in
float32 and in bfloat16, scored against the same real images with a classifier bundle's features, and timed.

    python benchmarks/probes/sample_precision.py GEN CLASSIFIER [PER_CLASS] [DATA]
"""
import sys
import time

import torch

from imagefit.bundle import load_bundle
from imagefit.seeds import Stream, choice_generator
from imagefit.generative.generate import load_generator
from imagefit.generative.quality import Scorer, _draw_set, _real_train

gen, clf = sys.argv[1], sys.argv[2]
per_class = int(sys.argv[3]) if len(sys.argv) > 3 else 50
data = sys.argv[4] if len(sys.argv) > 4 else None
unet, cfg = load_generator(gen)
bundle = load_bundle(clf)
real, _ = _real_train(data, cfg.classes, bundle.preprocessing.size)
real = real.subset(torch.randperm(len(real), generator=choice_generator(0, Stream.REAL_SUBSET))[:10000])
scorer = Scorer(real.images, bundle, fake_size=per_class * len(cfg.classes))
images = {}
for amp in ("no", "bf16"):  # generate eval's draw: DDIM 50 steps, guidance 2, batches of 250, seed 0
    start = time.perf_counter()
    images[amp], labels = _draw_set(unet, cfg, per_class, 50, 2.0, 0, bundle.preprocessing.size, amp=amp)
    seconds = time.perf_counter() - start
    r = scorer.score(images[amp], labels)
    print(f"{'float32' if amp == 'no' else 'bfloat16'}: {len(labels) / seconds:.2f} images/s, FID {r['fid']:.3f}, "
          f"KID {r['kid']:.4f}, classifier names the drawn class {r.get('label_accuracy', float('nan')):.1%}",
          flush=True)
diff = (images["no"].float() - images["bf16"].float()).abs()
print(f"same noise, float32 against bfloat16: mean |pixel difference| {diff.mean():.2f} of 255, "
      f"{(diff.flatten(1).amax(1) > 64).float().mean():.1%} of images differ by > 64 somewhere")
