"""Write the random-weight checkpoints `modelchip bench` compares parallel layouts on (docs/parallel.md, "Cost
on this machine"), with the conformance kit's checkpoint writer:

- `moe`: a Qwen3-MoE model (hidden 512, 8 layers of 8 heads / 4 K/V heads, 8 experts of width 512, top 2,
  vocabulary 8192; 60M parameters): expert parallel 2 and 4, data-parallel attention + EP, AFD with 1-2
  attention and 1, 2 or 4 FFN ranks all divide it, and a decode step takes milliseconds, not microseconds;
- `dense`: a Llama model of SmolLM2-135M's shape (hidden 576, 30 layers, MLP 1536, vocabulary 49152, tied
  embeddings) but 8 query heads and 4 K/V heads, so it splits over 2 tensor-parallel ranks (SmolLM2's 9 and 3
  split only over 3, which oversubscribes a 2-core machine).

    python benchmarks/parallel_checkpoints.py --out /tmp/bench-models
"""

from __future__ import annotations

import argparse

MOE = {"model_type": "qwen3_moe", "vocab_size": 8192, "hidden_size": 512, "num_hidden_layers": 8,
       "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
       "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64, "intermediate_size": 1536,
       "moe_intermediate_size": 512, "num_experts": 8, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
       "mlp_only_layers": [], "norm_topk_prob": True}
DENSE = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
         "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True,
         "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 1536}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory to write moe/ and dense/ under")
    ap.add_argument("--only", choices=("moe", "dense"), default=None)
    args = ap.parse_args()

    from modelchip.conformance.tiny_checkpoint import write_checkpoint

    for name, config in (("moe", MOE), ("dense", DENSE)):
        if args.only in (None, name):
            print(write_checkpoint(config, f"{args.out}/{name}", seed=0))


if __name__ == "__main__":
    main()
