"""Tiny configs of every runtime family, in the field names their real config.json files use."""

BASE = {"vocab_size": 96, "hidden_size": 48, "num_hidden_layers": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": False}

CONFIGS = {
    "llama": {**BASE, "model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64},
    "qwen2": {**BASE, "model_type": "qwen2", "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64},
    "qwen3": {**BASE, "model_type": "qwen3", "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "intermediate_size": 64},
    "qwen3_moe": {**BASE, "model_type": "qwen3_moe", "num_attention_heads": 4, "num_key_value_heads": 2,
                  "head_dim": 16, "intermediate_size": 64, "moe_intermediate_size": 24, "num_experts": 6,
                  "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [0]},
    "mixtral": {**BASE, "model_type": "mixtral", "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2},
    "deepseek_v3": {**BASE, "model_type": "deepseek_v3", "num_attention_heads": 4, "num_key_value_heads": 4,
                    "intermediate_size": 64, "moe_intermediate_size": 16, "n_routed_experts": 8,
                    "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 4, "topk_group": 2,
                    "routed_scaling_factor": 2.5, "first_k_dense_replace": 1, "q_lora_rank": 24,
                    "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 12},
    "step3_text": {**BASE, "model_type": "step3_text", "num_attention_heads": 4, "num_attention_groups": 1,
                   "head_dim": 16, "share_q_dim": 24, "intermediate_size": 64, "moe_intermediate_size": 16,
                   "moe_num_experts": 6, "moe_top_k": 3, "share_expert_dim": 16, "moe_layers_enum": "1",
                   "norm_expert_weight": False},
}
