"""What one AT-EDM pruning event costs and saves, per attention block of a model: `python -m benchmarks.atedm_costs`.

For each Transformer2DModel of the UNet, at the model's native latent size with a CFG batch, the median
microseconds (1 torch thread) of: attn1 with fused SDPA (what the baseline runs) and with explicit
softmax(QK^T) (what ranking needs), G-WPR on that map, the pruning plan (argsort + cosine pairing), the
gather/restore, and the work pruning acts on, on all tokens and on the kept ones (one-layer blocks: attn2 +
feed-forward; multi-layer blocks: the blocks after the first). net_us = saving - overhead: negative means a
pruning event at this block costs more than it saves, which is why AT-EDM can be slower than the baseline
on small models even though it really removes the tokens. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from analysis.accel import prune
from analysis.attention import attention_with_probs
from analysis.jsonsafe import dumps
from analysis.models import load_pipeline
from analysis.token_rank import gwpr


def _time_us(fn, calls: int) -> float:
    fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def block_costs(transformer, n_tokens: int, text: torch.Tensor, ratio: float, calls: int) -> dict:
    blocks = transformer.transformer_blocks
    first, attn1 = blocks[0], blocks[0].attn1
    channels = attn1.to_q.in_features
    x = torch.randn(text.shape[0], n_tokens, channels, generator=torch.Generator().manual_seed(0))
    _, probs = attention_with_probs(attn1, x)
    scores = gwpr(probs, attn1.heads)
    n_prune = min(int(ratio * n_tokens), n_tokens - 1)
    plan = prune.plan(x, scores, n_prune)
    kept = prune.prune(x, plan)

    if len(blocks) == 1:
        def after(h):
            h = first.attn2(first.norm2(h), encoder_hidden_states=text) + h
            return first.ff(first.norm3(h)) + h
    else:
        def after(h):
            for block in blocks[1:]:
                h = block(h, encoder_hidden_states=text)
            return h
    out = {
        "tokens": n_tokens, "channels": channels, "pruned": n_prune,
        "attn1_sdpa_us": _time_us(lambda: attn1.processor(attn1, x), calls),
        "attn1_explicit_us": _time_us(lambda: attention_with_probs(attn1, x), calls),
        "gwpr_us": _time_us(lambda: gwpr(probs, attn1.heads), calls),
        "plan_us": _time_us(lambda: prune.plan(x, scores, n_prune), calls),
        "gather_restore_us": _time_us(lambda: prune.restore(prune.prune(x, plan), plan), calls),
        "pruned_work_all_tokens_us": _time_us(lambda: after(x), calls),
        "pruned_work_kept_tokens_us": _time_us(lambda: after(kept), calls),
    }
    out["overhead_us"] = (out["attn1_explicit_us"] - out["attn1_sdpa_us"] + out["gwpr_us"] + out["plan_us"]
                          + out["gather_restore_us"])
    out["saving_us"] = out["pruned_work_all_tokens_us"] - out["pruned_work_kept_tokens_us"]
    out["net_us"] = out["saving_us"] - out["overhead_us"]
    return out


def _attention_blocks(unet, text: torch.Tensor) -> dict[str, tuple[torch.nn.Module, int]]:
    """Every Transformer2DModel with its token count at the native latent size, read off one UNet call."""
    blocks, handles = {}, []
    for name, module in unet.named_modules():
        if type(module).__name__ == "Transformer2DModel":
            def record(mod, args, name=name):
                blocks[name] = (mod, args[0].shape[-2] * args[0].shape[-1])
            handles.append(module.register_forward_pre_hook(record))
    side = unet.config.sample_size
    try:
        unet(torch.randn(text.shape[0], unet.config.in_channels, side, side), 999, text)
    finally:
        for handle in handles:
            handle.remove()
    return blocks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--ratio", type=float, default=0.63)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    unet = pipe.unet
    text = torch.randn(2, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim)
    report = {"model": args.model, "ratio": args.ratio, "threads": args.threads, "blocks": {}}
    with torch.inference_mode():
        for name, (module, n_tokens) in _attention_blocks(unet, text).items():
            report["blocks"][name] = b = block_costs(module, n_tokens, text, args.ratio, args.calls)
            print(f"{name}: {n_tokens} tokens x {b['channels']} ch: saving {b['saving_us']:.0f} us, overhead "
                  f"{b['overhead_us']:.0f} us (explicit attn1 +{b['attn1_explicit_us'] - b['attn1_sdpa_us']:.0f}, "
                  f"G-WPR {b['gwpr_us']:.0f}, plan {b['plan_us']:.0f}, gather {b['gather_restore_us']:.0f}), "
                  f"net {b['net_us']:+.0f} us", flush=True)
    print(dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
