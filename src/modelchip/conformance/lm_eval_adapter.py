"""An lm-evaluation-harness model over a modelchip `LLM`, in process: log-likelihoods from the engine's prompt
log-probabilities, generations from its greedy decoding. Tokenization and the context/continuation split are
lm-eval's own (`TemplateLM`), so the same task scores the same tokens here, through `modelchip serve` with
lm-eval's `local-completions`, and with lm-eval's `hf` backend."""

from __future__ import annotations

from lm_eval.api.model import TemplateLM

from modelchip.engine import SamplingParams
from modelchip.errors import ModelchipError


class ModelchipLM(TemplateLM):
    def __init__(self, llm, batch_size: int = 16):
        super().__init__()
        if llm.tokenizer is None:
            raise ModelchipError(f"{llm.source} has no tokenizer; lm-eval tasks are text")
        self.llm, self.batch_size = llm, batch_size
        self.tokenizer = llm.tokenizer
        self.scores: list[float] = []  # every log-likelihood computed, in request order (the conformance step)

    @property
    def eot_token_id(self) -> int:
        return min(self.llm.eos_ids)

    def tok_encode(self, string: str, **kwargs) -> list[int]:
        return self.llm.tokenizer.encode(string, add_special_tokens=False)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            prompts = [ctx + cont for _, ctx, cont in batch]
            gens = self.llm.generate(prompts, SamplingParams(max_tokens=0, prompt_logprobs=0))
            for (_, ctx, cont), gen in zip(batch, gens, strict=True):
                entries = gen.prompt_logprobs[len(ctx):]
                chosen = [e[t] for e, t in zip(entries, cont, strict=True)]
                score = sum(lp.logprob for lp in chosen)
                self.scores.append(score)
                out.append((score, all(lp.rank == 1 for lp in chosen)))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            ids = [self.eot_token_id] + self.tok_encode(req.args[0])
            gen = self.llm.generate([ids], SamplingParams(max_tokens=0, prompt_logprobs=0))[0]
            out.append(sum(e[t].logprob for e, t in zip(gen.prompt_logprobs[1:], ids[1:], strict=True)))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            params = SamplingParams(max_tokens=int(kwargs.get("max_gen_toks", 256)), temperature=0.0, stop=until)
            out.append(self.llm.generate([self.tok_encode(context)], params)[0].text)
        return out
