#!/usr/bin/env python3
"""Measures llama.cpp (through llama-cpp-python) the way `examples/model_speed.rs` measures
sophon's local model: time to first token at each turn of the same 10-turn conversation, then
one long reply. Needs `pip install llama-cpp-python`; the model is sophon's default.

    python3 scripts/bench-llama-cpp.py [--tokens 64] [--threads 2]
"""
import argparse
import os
import time

from llama_cpp import Llama

TURNS = [
    "Hello! My name is Ada and I live in Lisbon.",
    "I work as a baker. I start at four in the morning.",
    "My favourite bread is a sourdough with rye.",
    "On weekends I play chess in the park.",
    "I have a cat called Pixel.",
    "What do you think I should bake for a party?",
    "Can you suggest a name for a new bakery?",
    "What is a good opening for a beginner at chess?",
    "How do I keep a cat off the kitchen counter?",
    "Remind me: what is my name and where do I live?",
]
STORY = "Write a long story about a dragon who becomes a baker."


def model_path():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ["HOME"], ".cache")
    return os.environ.get("SOPHON_MODEL") or os.path.join(cache, "sophon", "SmolLM2-135M-Instruct.Q4_1.gguf")


def ask(llm, messages, max_tokens):
    """Streams one reply; returns (text, tokens, time to first token, time for the rest)."""
    asked = time.perf_counter()
    first = None
    text = ""
    for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0, stream=True):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            if first is None:
                first = time.perf_counter() - asked
            text += piece
    rest = time.perf_counter() - asked - (first or 0.0)
    return text, len(llm.tokenize(text.encode(), add_bos=False, special=False)), first or 0.0, rest


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    llm = Llama(model_path(), n_ctx=4096, n_threads=args.threads, verbose=False)
    messages = []
    print("turn | time to first token | reply tokens | tokens/s after the first")
    generated, generating = 0, 0.0
    for i, turn in enumerate(TURNS):
        messages.append({"role": "user", "content": turn})
        text, count, first, rest = ask(llm, messages, args.tokens)
        messages.append({"role": "assistant", "content": text.strip()})
        generated += max(count - 1, 0)
        generating += rest
        print(f"{i + 1:>4} | {first * 1e3:>16.1f} ms | {count:>12} | {max(count - 1, 0) / max(rest, 1e-9):>8.1f}")
    print(f"overall: {generated / max(generating, 1e-9):.1f} tokens/s after the first token of each reply")
    llm.reset()
    text, count, first, rest = ask(Llama(model_path(), n_ctx=4096, n_threads=args.threads, verbose=False),
                                   [{"role": "user", "content": STORY}], max(args.tokens, 200))
    print(f"long reply: {count} tokens, first after {first * 1e3:.1f} ms, then {max(count - 1, 0) / max(rest, 1e-9):.1f} tokens/s")


if __name__ == "__main__":
    main()
