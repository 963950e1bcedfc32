"""Drives kvtier-node with the OpenAI Python client: a two-turn streaming chat whose
second turn must report cached prompt tokens.

Usage: openai_client.py BASE_URL MODEL MIN_CACHED
Prints one JSON line with what it saw; exits non-zero when a check fails.
"""

import json
import sys

from openai import OpenAI


def streamed_turn(client, model, messages, conversation):
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=12,
        temperature=0,
        extra_headers={"x-kvtier-conversation": conversation},
    )
    text, usage = [], None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    if usage is None:
        sys.exit("the stream ended without a usage chunk")
    return "".join(text), usage


def main():
    base_url, model, min_cached = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = OpenAI(base_url=base_url, api_key="unused", timeout=60, max_retries=0)
    listed = [m.id for m in client.models.list()]
    if model not in listed:
        sys.exit(f"model {model} is not among {listed}")

    messages = [{"role": "user", "content": "Once upon a time, there was a little girl "
                 "named Lily. She loved to play in the park."}]
    answer, first = streamed_turn(client, model, messages, "openai-client-test")
    if not answer:
        sys.exit("the first turn streamed no text")
    messages += [{"role": "assistant", "content": answer},
                 {"role": "user", "content": "And then?"}]
    _, second = streamed_turn(client, model, messages, "openai-client-test")

    cached = second.prompt_tokens_details.cached_tokens
    print(json.dumps({
        "first_cached": first.prompt_tokens_details.cached_tokens,
        "second_prompt": second.prompt_tokens,
        "second_cached": cached,
    }))
    if first.prompt_tokens_details.cached_tokens != 0:
        sys.exit("the first turn reported cached tokens before anything was saved")
    if cached < min_cached:
        sys.exit(f"the second turn reported {cached} cached tokens, expected >= {min_cached}")


if __name__ == "__main__":
    main()
