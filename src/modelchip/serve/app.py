"""The OpenAI-compatible HTTP server: FastAPI routes over an `AsyncEngine`.

POST /v1/chat/completions and /v1/completions (SSE streaming or not, with usage), GET /v1/models, /health,
/metrics, /openapi.json, and POST /tokenize, /detokenize (ops_routes.py). Every request body is parsed and
checked here, before it reaches the engine, so bad input is a 4xx with an OpenAI-style error body; a client
that goes away has its requests aborted and their blocks freed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelchip.engine.async_engine import AsyncEngine
from modelchip.engine.llm_engine import LLMEngine, RequestOutput
from modelchip.engine.sampling_params import MAX_LOGPROBS, SamplingParams, StructuredOutputsParams
from modelchip.errors import ModelchipError
from modelchip.serve import metrics, openapi, tools
from modelchip.serve.logprobs_format import CompletionLogprobs, chat_content, merge
from modelchip.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    check_unsupported,
    error_body,
    parse,
)

log = logging.getLogger("modelchip.serve")

MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_PROMPTS = 64  # prompts in one /v1/completions request
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
KNOWN_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize",
               "/detokenize", "/openapi.json")
DISCONNECT_POLL_S = 0.5


@dataclass
class ServerState:
    llm: object
    engine: LLMEngine
    model_name: str
    api_key: str | None = None
    async_engine: AsyncEngine | None = None
    # sequences allowed to wait for the engine before new requests get 429 (None: no bound)
    max_waiting_requests: int | None = None
    health_without_api_key: bool = False  # let probes call GET /health without the key
    http: Counter = field(default_factory=Counter)
    created: int = field(default_factory=lambda: int(time.time()))


class _Gate:
    """Pure ASGI middleware: bearer-key check on every request, and HTTP status counts for /metrics.
    (Not BaseHTTPMiddleware, which would buffer streams and hide client disconnects.)"""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        status = {"code": 500}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            open_health = self.state.health_without_api_key and scope["path"] == "/health"
            if self.state.api_key is not None and not open_health and not self._authorized(scope):
                body = error_body("Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                                  code="invalid_api_key")
                await JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            self.state.http[(path, status["code"])] += 1

    def _authorized(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                   self.state.api_key.encode())


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Given an AsyncEngine, the caller drives it (`modelchip serve` runs it on the main thread); otherwise
        # the app steps its own on a background thread.
        own = state.async_engine is None
        if own:
            state.async_engine = AsyncEngine(state.engine)
            state.async_engine.start()
        yield
        if own:
            state.async_engine.stop()

    # /openapi.json only: the interactive /docs page would load its scripts from a CDN
    app = FastAPI(title="modelchip", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  responses={"default": openapi.error_response("An OpenAI-style error.")})
    app.add_middleware(_Gate, state=state)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body(), exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), kind, None, code), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(str(exc), code="invalid_request"), 400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal server error: {type(exc).__name__}", "server_error"), 500)

    @app.get("/health")
    async def health():
        alive = state.async_engine is not None and state.async_engine.alive
        return JSONResponse({"status": "ok" if alive else "engine stopped"}, 200 if alive else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def get_metrics():
        errors = state.async_engine.errors if state.async_engine else 0
        return PlainTextResponse(metrics.render(state.engine, state.http, errors, state.model_name),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        _check_model(state, model_id)
        return _model_card(state)

    @app.post("/v1/chat/completions", openapi_extra=openapi.request_body(ChatCompletionRequest))
    async def chat_completions(request: Request):
        req: ChatCompletionRequest = parse(ChatCompletionRequest, await _json(request))
        _check_model(state, req.model)
        check_unsupported(req)
        plan = _tool_plan(state, req)
        prompt = _chat_prompt(state, req, plan)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        top = _chat_top_logprobs(req)
        params = _sampling(state, req, [prompt], max_tokens, None, param, "messages", logprobs=top)
        params.structured_outputs = await _constraint(state, req, plan)
        _check_queue(state, req.n or 1)  # each of the n completions is a sequence in the queue
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_stream_chat(state, request, rid, req.model, prompt, params, include_usage, plan))
        outs = await _collect(state, request, [prompt], params)
        choices = []
        for i, out in enumerate(outs):
            logprobs = None
            if top is not None:
                logprobs = {"content": chat_content(out.token_ids, out.logprobs, top), "refusal": None}
            message = {"role": "assistant", "content": out.text}
            finish = out.finish_reason
            if plan is not None and plan.choice != "none":
                message["content"], calls = tools.parse_tool_calls(out.text)
                if calls:
                    message["tool_calls"] = calls
                    finish = "tool_calls" if finish == "stop" else finish
            choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": req.model,
                "choices": choices, "usage": _usage([prompt], outs)}

    @app.post("/v1/completions", openapi_extra=openapi.request_body(CompletionRequest))
    async def completions(request: Request):
        req: CompletionRequest = parse(CompletionRequest, await _json(request))
        _check_model(state, req.model)
        check_unsupported(req)
        prompts, texts = _completion_prompts(state, req)
        params = _sampling(state, req, prompts, req.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, "max_tokens",
                           "prompt", logprobs=req.logprobs, echo=bool(req.echo))
        params.structured_outputs = await _constraint(state, req, None)
        _check_queue(state, len(prompts) * (req.n or 1))
        rid = f"cmpl-{uuid.uuid4().hex}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _sse(_stream_completion(state, request, rid, req.model, prompts, texts, params, include_usage,
                                           bool(req.echo), req.logprobs))
        outs = await _collect(state, request, prompts, params)
        choices = []
        for i, out in enumerate(outs):
            p = i // params.n
            echoed = texts[p] if req.echo else ""
            logprobs = None
            if req.logprobs is not None:
                build = CompletionLogprobs(req.logprobs, partial(_decode_token, state))
                if req.echo:
                    logprobs = build.part(prompts[p], out.prompt_logprobs)
                logprobs = merge(logprobs, build.part(out.token_ids, out.logprobs))
            choices.append({"index": i, "text": echoed + out.text, "logprobs": logprobs,
                            "finish_reason": out.finish_reason})
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": req.model,
                "choices": choices, "usage": _usage(prompts, outs)}

    # imported here: the operations routes reuse this module's request helpers
    from modelchip.serve.ops_routes import MODELS, add_ops_routes

    add_ops_routes(app, state)
    openapi.install(app, [ChatCompletionRequest, CompletionRequest, *MODELS])
    return app


# -- request checks ----------------------------------------------------------------------------------------------


async def _json(request: Request):
    too_large = APIError(f"The request body is larger than {MAX_BODY_BYTES} bytes.", 413, code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():  # chunked uploads have no length: count as they arrive
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise too_large
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise APIError(f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None


def _model_card(state: ServerState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "modelchip",
            "max_model_len": state.engine.max_model_len}


def _check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise APIError(f"The model '{name}' does not exist; this server serves '{state.model_name}'.", 404,
                       param="model", code="model_not_found")


def _message_text(m, i: int) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    texts = []
    for j, part in enumerate(m.content):
        if part.type != "text" or part.text is None:
            raise APIError(f"Content of type '{part.type}' is not supported; this model reads text only.",
                           param=f"messages.{i}.content.{j}", code="unsupported_content")
        texts.append(part.text)
    return "\n".join(texts)


def _message_dict(m, i: int) -> dict:
    """One OpenAI message as the chat template reads it (HF's convention: tool-call arguments as objects)."""
    out = {"role": "system" if m.role == "developer" else m.role, "content": _message_text(m, i)}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        if m.role != "assistant":
            raise APIError("Only assistant messages carry tool_calls.", param=f"messages.{i}.tool_calls",
                           code="invalid_messages")
        calls = []
        for j, call in enumerate(m.tool_calls):
            try:
                arguments = json.loads(call.function.arguments)
            except json.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                raise APIError("Tool call arguments must be a JSON object.", code="invalid_messages",
                               param=f"messages.{i}.tool_calls.{j}.function.arguments")
            calls.append({"id": call.id or tools.new_call_id(), "name": call.function.name, "arguments": arguments})
        out["tool_calls"] = calls
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
    return out


@dataclass
class ToolPlan:
    """What a chat request asks of tools: the functions the model may call, how (auto, none, required or one
    named function), and whether the chat template renders tools itself."""

    functions: list[dict]
    choice: str
    parallel: bool
    native: bool


def _tool_plan(state: ServerState, req: ChatCompletionRequest) -> ToolPlan | None:
    named = isinstance(req.tool_choice, NamedToolChoice)
    if req.tools is None or not req.tools:
        if req.tools is not None:
            raise APIError("'tools' must not be empty; leave it out for no tools.", param="tools",
                           code="invalid_value")
        if req.tool_choice not in (None, "none"):
            raise APIError("'tool_choice' is only allowed when 'tools' are given.", param="tool_choice",
                           code="invalid_value")
        return None
    functions = [t.function.model_dump(exclude_none=True) for t in req.tools]
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise APIError(f"Tool names must be unique; '{dup}' is given twice.", param="tools", code="invalid_value")
    choice = "named" if named else (req.tool_choice or "auto")
    if named:
        wanted = req.tool_choice.function.name
        if wanted not in names:
            raise APIError(f"tool_choice names the function '{wanted}', which is not among the tools "
                           f"({', '.join(names)}).", param="tool_choice", code="invalid_value")
        functions = [f for f in functions if f["name"] == wanted]
    tokenizer = state.llm.tokenizer
    native = tokenizer is not None and bool(tokenizer.chat_template) and tools.template_renders_tools(tokenizer)
    if tokenizer is not None and choice != "none":
        try:
            tools.check_template_format(tokenizer)
        except ModelchipError as exc:
            raise APIError(str(exc), param="tools", code="unsupported_parameter") from None
    parallel = req.parallel_tool_calls is not False and not named
    return ToolPlan(functions, choice, parallel, native)


def _chat_prompt(state: ServerState, req: ChatCompletionRequest, plan: ToolPlan | None = None,
                 add_generation_prompt: bool = True, add_special_tokens: bool = False) -> list[int]:
    tokenizer = state.llm.tokenizer
    if tokenizer is None:
        raise APIError("This model has no tokenizer or chat template; use /v1/completions with token ids.",
                       param="messages", code="unsupported_model")
    messages = [_message_dict(m, i) for i, m in enumerate(req.messages)]
    # "none" keeps the tools out of the prompt, so the model is not invited to call them
    offered = [{"type": "function", "function": f} for f in plan.functions] \
        if plan is not None and plan.choice != "none" else None
    has_tool_turns = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if offered or has_tool_turns:
        native = plan.native if plan is not None else tools.template_renders_tools(tokenizer)
        messages, offered = tools.render_messages(messages, offered, native)
    try:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tools=offered)
    except ModelchipError as exc:
        raise APIError(str(exc), param="messages", code="invalid_messages") from None
    ids = tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
    if not ids:
        raise APIError("The messages render to an empty prompt.", param="messages", code="empty_prompt")
    return ids


async def _constraint(state: ServerState, req, plan: ToolPlan | None) -> StructuredOutputsParams | None:
    """The structured-output constraint of a request (response_format, vLLM's structured_outputs, or a forced
    tool call), compiled once here so that a bad schema is a 400 naming it."""
    fmt = req.response_format
    wanted = []
    if fmt is not None and fmt.type != "text":
        wanted.append("response_format")
    if req.structured_outputs is not None:
        wanted.append("structured_outputs")
    if plan is not None and plan.choice in ("required", "named"):
        wanted.append("tool_choice")
    if len(wanted) > 1:
        raise APIError(f"Only one of {' and '.join(wanted)} can constrain the output of one request.",
                       param=wanted[1], code="invalid_value")
    if not wanted:
        return None
    param = wanted[0]
    try:
        if param == "response_format" and fmt.type == "json_object":
            constraint = StructuredOutputsParams(json_object=True)
        elif param == "response_format":
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise APIError("response_format of type 'json_schema' needs json_schema.schema.",
                               param="response_format.json_schema", code="invalid_value")
            constraint = StructuredOutputsParams(json=fmt.json_schema.schema_)
        elif param == "structured_outputs":
            so = req.structured_outputs
            constraint = StructuredOutputsParams(json=so.json_, json_object=bool(so.json_object), regex=so.regex,
                                                 choice=so.choice, grammar=so.grammar)
        else:
            constraint = StructuredOutputsParams(grammar=tools.tool_call_grammar(plan.functions, plan.parallel))
        await asyncio.to_thread(state.engine.structured_output.check, constraint)
    except ModelchipError as exc:
        raise APIError(f"Invalid {param}: {exc}", param="tools" if param == "tool_choice" else param,
                       code="invalid_value") from None
    return constraint


def _decode_token(state: ServerState, token: int) -> str:
    tokenizer = state.llm.tokenizer
    return tokenizer.decode([token], skip_special_tokens=False) if tokenizer is not None else f"token_id:{token}"


def _completion_prompts(state: ServerState, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
    """Each prompt's token ids, and its text for `echo` (token-id prompts decoded)."""
    p = req.prompt
    prompts = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
    if not prompts:
        raise APIError("'prompt' must not be empty.", param="prompt", code="empty_prompt")
    if len(prompts) > MAX_PROMPTS:
        raise APIError(f"At most {MAX_PROMPTS} prompts per request.", param="prompt", code="too_many_prompts")
    out, texts = [], []
    tokenizer = state.llm.tokenizer
    for one in prompts:
        try:
            ids = state.llm.encode_prompt(one)
        except ModelchipError as exc:
            raise APIError(f"Invalid prompt: {exc}", param="prompt", code="invalid_prompt") from None
        out.append(ids)
        texts.append(one if isinstance(one, str) else
                     tokenizer.decode(ids, skip_special_tokens=False) if tokenizer is not None and req.echo else "")
    return out, texts


def _chat_top_logprobs(req: ChatCompletionRequest) -> int | None:
    """How many alternatives per token a chat request wants (0 when only the chosen token's), or None."""
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs", code="invalid_value")
    if not req.logprobs:
        return None
    top = req.top_logprobs or 0
    if not 0 <= top <= MAX_LOGPROBS:
        raise APIError(f"'top_logprobs' must be between 0 and {MAX_LOGPROBS}, got {top}.", param="top_logprobs",
                       code="invalid_value")
    return top


def _sampling(state: ServerState, req, prompts: list[list[int]], max_tokens: int | None, default: int | None,
              param: str, prompt_param: str, logprobs: int | None = None, echo: bool = False) -> SamplingParams:
    context = state.engine.max_model_len
    longest = max(len(p) for p in prompts)
    room = context - longest
    if room < 1:
        raise APIError(f"This model's maximum context length is {context} tokens. However, your {prompt_param} "
                       f"resulted in {longest} tokens. Please reduce the length of the {prompt_param}.",
                       param=prompt_param, code="context_length_exceeded")
    # max_tokens 0 with echo scores the prompt and generates nothing (how lm-eval asks for log-likelihoods)
    lowest = 0 if echo else 1
    if max_tokens is not None and max_tokens < lowest:
        raise APIError(f"'{param}' must be at least {lowest}{'' if echo else ' (0 only with echo)'}, got "
                       f"{max_tokens}.", param=param, code="invalid_value")
    if max_tokens is None:
        max_tokens = min(default or room, room)
    if max_tokens > room:
        raise APIError(f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{longest + max_tokens} tokens ({longest} in the {prompt_param}, {max_tokens} in the "
                       f"completion). Please reduce the length of the {prompt_param} or completion.",
                       param=param, code="context_length_exceeded")
    temperature = 1.0 if req.temperature is None else req.temperature
    if not 0 <= temperature <= 2:
        raise APIError(f"'temperature' must be between 0 and 2, got {temperature}.", param="temperature",
                       code="invalid_value")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0 <= top_p <= 1:
        raise APIError(f"'top_p' must be between 0 and 1, got {top_p}.", param="top_p", code="invalid_value")
    if top_p == 0:  # keep only the most likely token
        temperature, top_p = 0.0, 1.0
    top_k = req.top_k or 0
    if top_k < -1:
        raise APIError(f"'top_k' must be -1, 0 (off) or positive, got {top_k}.", param="top_k", code="invalid_value")
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise APIError(f"'logprobs' must be between 0 and {MAX_LOGPROBS}, got {logprobs}.", param="logprobs",
                       code="invalid_value")
    if echo and max_tokens == 0 and logprobs is None:
        logprobs = 0  # nothing to generate: the echoed prompt is the whole answer, scored or not
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=req.seed,
                  stop=stop, ignore_eos=bool(req.ignore_eos), n=1 if req.n is None else req.n,
                  presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
                  repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
                  logit_bias=_logit_bias(req.logit_bias), min_tokens=req.min_tokens or 0,
                  stop_token_ids=req.stop_token_ids or [], logprobs=logprobs,
                  prompt_logprobs=logprobs if echo else None)
    try:
        params = SamplingParams(**kwargs)
        params.check_vocab(state.llm.vocab_size)
    except ModelchipError as exc:
        name = str(exc).split()[0]  # the engine's messages start with the field's name
        name = "stop" if name == "at" else name  # "at most 16 stop strings"
        raise APIError(str(exc), param=name if name in kwargs else None, code="invalid_value") from None
    return params


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    """OpenAI's logit_bias keys are token ids written as JSON strings."""
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        if not key.strip().isdigit():
            raise APIError(f"'logit_bias' keys must be token ids, got {key!r}.", param="logit_bias",
                           code="invalid_value")
        out[int(key)] = value
    return out


def _check_queue(state: ServerState, num_seqs: int) -> None:
    """Refuse with 429 what would push the engine's waiting queue past its bound; an empty queue takes any one
    request. 429, not 503: the server is healthy and shedding load (503 makes proxies and load balancers count
    the instance as failing), and clients such as the openai one retry a 429 after its Retry-After."""
    limit = state.max_waiting_requests
    waiting = state.async_engine.num_waiting
    if limit is not None and waiting and waiting + num_seqs > limit:
        raise APIError(f"The server is busy: {waiting} requests are waiting for the engine (at most {limit}). "
                       "Retry later.", 429, "server_overloaded", code="queue_full")


# -- running requests ----------------------------------------------------------------------------------------


class _Submission:
    """The engine requests behind one HTTP request (one per prompt, each with its n completions). Outputs arrive
    from the engine thread on one asyncio queue as (choice index, output), choice = prompt index * n +
    completion index; whatever has not finished when the HTTP request ends is aborted."""

    def __init__(self, state: ServerState, request: Request, prompts: list[list[int]], params: SamplingParams):
        self.engine = state.async_engine
        self.request = request
        self.n = params.n
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, RequestOutput]] = asyncio.Queue()
        base = uuid.uuid4().hex
        self.ids = [f"{base}-{i}" for i in range(len(prompts))]
        self.pending = set(self.ids)
        self.next_check = self.loop.time() + DISCONNECT_POLL_S
        for i, (rid, ids) in enumerate(zip(self.ids, prompts, strict=True)):
            self.engine.add_request(rid, ids, params, partial(self._sink, i))

    def _sink(self, index: int, out: RequestOutput) -> None:  # engine thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (index * self.n + out.index, out))

    async def next(self) -> tuple[int, RequestOutput] | None:
        """The next output, or None once the client has gone. Outputs arrive every step, so the client is
        checked on a clock, not only when the queue is idle (a streaming response is also cancelled by Starlette
        when its client goes; a non-streaming one has only this check)."""
        loop = self.loop
        while True:
            if loop.time() >= self.next_check:
                self.next_check = loop.time() + DISCONNECT_POLL_S
                if await self.request.is_disconnected():
                    return None
            if not self.queue.empty():  # the common case: no timer task needed
                index, out = self.queue.get_nowait()
            else:
                try:
                    index, out = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    continue
            if out.request_finished:
                self.pending.discard(self.ids[index // self.n])
            return index, out

    def abort_pending(self) -> None:
        for rid in self.pending:
            self.engine.abort(rid)
        self.pending.clear()


def _raise_if_failed(out: RequestOutput) -> None:
    if out.finish_reason == "error":
        raise APIError(out.error or "internal error", 500, "server_error")


@dataclass
class _Choice:
    """One finished choice, with the log-probabilities gathered over its outputs."""

    text: str
    token_ids: list[int]
    finish_reason: str
    num_output_tokens: int
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list | None = None


async def _collect(state: ServerState, request: Request, prompts: list[list[int]],
                   params: SamplingParams) -> list[_Choice]:
    sub = _Submission(state, request, prompts, params)
    results: list[_Choice | None] = [None] * (len(prompts) * params.n)
    logprobs: dict[int, list] = {}
    prompt_logprobs: dict[int, list] = {}
    try:
        while sub.pending:
            got = await sub.next()
            if got is None:
                raise APIError("client disconnected", 499)
            index, out = got
            _raise_if_failed(out)
            logprobs.setdefault(index, []).extend(out.logprobs or ())
            if out.prompt_logprobs is not None:
                prompt_logprobs[index] = out.prompt_logprobs
            if out.finished:
                results[index] = _Choice(out.text or "", out.token_ids or [], out.finish_reason,
                                         out.num_output_tokens, logprobs.get(index, []), prompt_logprobs.get(index))
    finally:
        sub.abort_pending()
    return results


def _usage(prompts: list[list[int]], outs: list) -> dict:
    p = sum(map(len, prompts))
    c = sum(o.num_output_tokens for o in outs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def body():
        async for event in events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(state: ServerState, request: Request, prompts: list[list[int]], params: SamplingParams,
                  first: list[dict], chunk, usage_chunk) -> AsyncIterator[dict]:
    """`chunk(choice index, output)` makes the event for one output, or None when it has nothing to send."""
    sub = _Submission(state, request, prompts, params)
    outs: list[RequestOutput | None] = [None] * (len(prompts) * params.n)
    try:
        for event in first:
            yield event
        while sub.pending:
            got = await sub.next()
            if got is None:
                return
            index, out = got
            if out.finish_reason == "error":
                yield error_body(out.error or "internal error", "server_error")
                return
            event = chunk(index, out)
            if event is not None:
                yield event
            if out.finished:
                outs[index] = out
        if usage_chunk is not None:
            yield usage_chunk(_usage(prompts, outs))
    finally:  # normal end, client gone (the stream is cancelled or closed) or error: free the blocks now
        sub.abort_pending()


def _stream_chat(state, request, rid, model, prompt, params, include_usage, plan) -> AsyncIterator[dict]:
    created = int(time.time())
    top = params.logprobs
    # tool-call text becomes tool_calls deltas, parsed per completion (each of the n has its own parser)
    parsers = {i: tools.ToolCallParser() for i in range(params.n)} if plan is not None and plan.choice != "none" \
        else {}

    def frame(choices: list, usage=None) -> dict:
        event = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices}
        if include_usage:
            event["usage"] = usage
        return event

    def chunk(index: int, out: RequestOutput) -> dict | None:
        logprobs = None
        if top is not None and out.new_token_ids:
            logprobs = {"content": chat_content(out.new_token_ids, out.logprobs, top), "refusal": None}
        text, finish, calls = out.new_text, out.finish_reason if out.finished else None, []
        parser = parsers.get(index)
        if parser is not None:  # only the text around the tool calls is content
            text, calls = parser.add(text)
            if finish is not None:
                rest, more = parser.finish()
                text, calls = text + rest, calls + more
                finish = "tool_calls" if parser.calls and finish == "stop" else finish
        delta = {"content": text} if text else {}
        if calls:
            delta["tool_calls"] = [c.openai() for c in calls]
        if not delta and finish is None and not logprobs:
            return None
        return frame([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])

    first = [frame([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}]) for i in range(params.n)]
    usage_chunk = (lambda usage: frame([], usage)) if include_usage else None
    return _stream(state, request, [prompt], params, first, chunk, usage_chunk)


def _stream_completion(state, request, rid, model, prompts, texts, params, include_usage, echo: bool,
                       k: int | None) -> AsyncIterator[dict]:
    """`k`: the request's `logprobs` (None: no logprobs in the chunks)."""
    created = int(time.time())
    builders: dict[int, CompletionLogprobs] = {}

    def frame(choices: list, usage=None) -> dict:
        event = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
        if include_usage:
            event["usage"] = usage
        return event

    def chunk(index: int, out: RequestOutput) -> dict | None:
        text, logprobs = out.new_text, None
        started = index in builders
        if not started:
            builders[index] = CompletionLogprobs(k or 0, partial(_decode_token, state))
        build = builders[index]
        if echo and not started:  # the prompt goes out with the choice's first chunk
            text = texts[index // params.n] + text
            if k is not None:
                logprobs = build.part(prompts[index // params.n], out.prompt_logprobs)
        if k is not None and out.new_token_ids:
            logprobs = merge(logprobs, build.part(out.new_token_ids, out.logprobs))
        if not (text or out.finished or logprobs):
            return None
        return frame([{"index": index, "text": text, "logprobs": logprobs,
                       "finish_reason": out.finish_reason if out.finished else None}])

    usage_chunk = (lambda usage: frame([], usage)) if include_usage else None
    return _stream(state, request, prompts, params, [], chunk, usage_chunk)
