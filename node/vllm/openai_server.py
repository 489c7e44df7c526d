"""vLLM's own OpenAI layer, set up the same way at the ingress and in every engine replica.

The API is vLLM's: its request models, validation, chat templates, sampling
parameters, logprobs, ``n``, stop handling, structured output, tools and
response assembly. This module builds the two halves of it from one
description (the engine's ``AsyncEngineArgs`` fields plus vLLM's frontend
options, ``BaseFrontendArgs``), so both tokenize with the same tokenizer,
chat template and parsers:

* ``init_render_state``: the engine-less render step at the ingress (vLLM's
  ``init_render_app_state``, as ``vllm launch render`` runs it): model check,
  chat template, tokenization, validation, default ``max_tokens``, plus
  ``/v1/models``, ``/tokenize`` and ``/detokenize``;
* ``init_serving_state``: vLLM's ``init_app_state`` on an engine replica's
  ``AsyncLLM`` (``OpenAIServingChat``, ``OpenAIServingCompletion``, ...).

``docs/openai-layer.md`` lists the vLLM internals this relies on.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

#: The vLLM tasks the engine replicas serve (the OpenAI generation endpoints).
SUPPORTED_TASKS = ("generate",)


def unknown_frontend_options(options: dict[str, Any]) -> list[str]:
    """The keys of ``options`` that are not fields of vLLM's ``BaseFrontendArgs``, sorted."""
    from vllm.entrypoints.launchers.cli_args import BaseFrontendArgs

    return sorted(set(options) - {f.name for f in dataclasses.fields(BaseFrontendArgs)})


def server_args(model: str, served_model_name: str, engine_args: dict[str, Any],
                frontend: dict[str, Any]) -> argparse.Namespace:
    """vLLM's server arguments (what ``vllm serve`` parses) for one deployment.

    ``model`` is the resolved path or HF id; ``engine_args`` are ``AsyncEngineArgs``
    fields; ``frontend`` are ``BaseFrontendArgs`` fields (``enable_auto_tool_choice``,
    ``tool_call_parser``, ``chat_template``, ...). Defaults are vLLM's own, taken
    from its argument parser.

    Raises ``ValueError`` for an option vLLM's frontend does not have.
    """
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    unknown = unknown_frontend_options(frontend)
    if unknown:
        raise ValueError(f"unknown vLLM frontend option(s): {', '.join(unknown)}")
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", model])
    for key, value in {**engine_args, **frontend}.items():
        setattr(args, key, value)
    args.served_model_name = [served_model_name]
    args.api_key = None  # keys are checked by the ingress (cluster.http.api.APIKeys), never passed around
    return args


def engine_args_from(args: argparse.Namespace):
    """The ``AsyncEngineArgs`` the engine replica runs (and the ingress renders for)."""
    from vllm import AsyncEngineArgs

    return AsyncEngineArgs.from_cli_args(args)


async def init_render_state(state, args: argparse.Namespace) -> None:
    """vLLM's render-only app state on ``state`` (``serving_render``, ``openai_serving_models``, ...).

    Builds the ``VllmConfig`` without an engine, as ``vllm launch render`` does:
    model, logging and structured-outputs configs from the same engine arguments.
    """
    from vllm.config import VllmConfig
    from vllm.entrypoints.launchers.render.app_state import init_render_app_state

    ea = engine_args_from(args)
    vllm_config = VllmConfig(model_config=ea.create_model_config(), logging_config=ea.create_logging_config(),
                             structured_outputs_config=ea.create_structured_outputs_config())
    await init_render_app_state(vllm_config, state, args)


async def init_serving_state(engine, state, args: argparse.Namespace) -> None:
    """vLLM's full app state on ``state`` for ``engine`` (``openai_serving_chat``, ``openai_serving_completion``)."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state

    await init_app_state(engine, state, args, SUPPORTED_TASKS)
