"""Two small lm-evaluation-harness tasks defined here, over local JSONL (no dataset hub): a multiple-choice task
scored by log-likelihood (`modelchip_mc`, accuracy) and a short-answer generation task (`modelchip_gen`,
exact match after trimming). They are lm-eval task configs, usable with any lm-eval model type:

    lm_eval.simple_evaluate(model="local-completions", model_args=..., tasks=eval_tasks.configs())
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "eval_data"
MC, GEN = "modelchip_mc", "modelchip_gen"


def _json(name: str) -> dict:
    # lm-eval reads it through the `datasets` JSON builder: local, nothing downloaded
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(DATA / name)}},
            "test_split": "test"}


def mc_config() -> dict:
    return {"task": MC, **_json("mc.jsonl"), "output_type": "multiple_choice",
            "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}", "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


# two worked examples in every prompt: a 135M model answers in one word after them, and in sentences without
SHOTS = ("Question: What is the capital of Peru?\nAnswer: Lima\n\n"
         "Question: How many legs does a cat have?\nAnswer: Four\n\n")


def gen_config(max_gen_toks: int = 8) -> dict:
    return {"task": GEN, **_json("gen.jsonl"), "output_type": "generate_until",
            "doc_to_text": SHOTS + "Question: {{question}}\nAnswer:", "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n", "."], "max_gen_toks": max_gen_toks, "do_sample": False,
                                  "temperature": 0.0},
            "filter_list": [{"name": "trimmed", "filter": [{"function": "remove_whitespace"},
                                                           {"function": "take_first"}]}],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": True}]}


def configs() -> list[dict]:
    return [mc_config(), gen_config()]
