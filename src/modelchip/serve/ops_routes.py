"""POST /tokenize and /detokenize, with vLLM's request and response shapes, so clients can count and check
tokens with the served model's own tokenizer and chat template (the exact ids a completion would be given).

    /tokenize    {"prompt": "...", "add_special_tokens": true, "return_token_strs": false}
                 or {"messages": [...], "add_generation_prompt": true, "add_special_tokens": false}
                 -> {"count", "max_model_len", "tokens", "token_strs"}
    /detokenize  {"tokens": [...]} -> {"prompt": "..."}

`model` is optional in both, as in vLLM; when given it must name the served model.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from modelchip.serve.app import ServerState, _chat_prompt, _check_model, _json
from modelchip.serve.openapi import request_body
from modelchip.serve.protocol import APIError, ChatCompletionRequest, parse


class TokenizeCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    prompt: StrictStr
    add_special_tokens: StrictBool = True
    return_token_strs: StrictBool | None = False


class TokenizeChatRequest(ChatCompletionRequest):
    """The chat completion body (so the prompt renders exactly as a completion would), plus vLLM's switches."""

    model: StrictStr | None = None
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False
    add_special_tokens: StrictBool = False
    return_token_strs: StrictBool | None = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    tokens: list[StrictInt]


TOKENIZE_MODELS = (TokenizeCompletionRequest, TokenizeChatRequest)
MODELS = (*TOKENIZE_MODELS, DetokenizeRequest)


def add_ops_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/tokenize", openapi_extra=request_body(*TOKENIZE_MODELS))
    async def tokenize(request: Request):
        body = await _json(request)
        chat = isinstance(body, dict) and "messages" in body
        req = parse(TokenizeChatRequest if chat else TokenizeCompletionRequest, body)
        if req.model is not None:
            _check_model(state, req.model)
        tokenizer = state.llm.tokenizer
        if tokenizer is None:
            raise APIError("This model has no tokenizer; it takes token ids only.", code="unsupported_model")
        if chat:
            if req.continue_final_message:
                raise APIError("'continue_final_message' is not supported by this server.",
                               param="continue_final_message", code="unsupported_parameter")
            ids = _chat_prompt(state, req, add_generation_prompt=req.add_generation_prompt,
                               add_special_tokens=req.add_special_tokens)
        else:
            ids = tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        strs = [tokenizer.backend.id_to_token(t) for t in ids] if req.return_token_strs else None
        return {"count": len(ids), "max_model_len": state.engine.max_model_len, "tokens": ids, "token_strs": strs}

    @app.post("/detokenize", openapi_extra=request_body(DetokenizeRequest))
    async def detokenize(request: Request):
        req: DetokenizeRequest = parse(DetokenizeRequest, await _json(request))
        if req.model is not None:
            _check_model(state, req.model)
        tokenizer = state.llm.tokenizer
        if tokenizer is None:
            raise APIError("This model has no tokenizer to turn ids into text.", code="unsupported_model")
        vocab = state.llm.vocab_size
        bad = next((i for i, t in enumerate(req.tokens) if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(f"Token id {req.tokens[bad]} is outside the vocabulary (0..{vocab - 1}).",
                           param=f"tokens.{bad}", code="invalid_value")
        # special tokens kept, as vLLM does: this is the text of exactly these ids
        return {"prompt": tokenizer.decode(req.tokens, skip_special_tokens=False)}
