"""One place that turns a question (and answer) into model text, for training and inference alike.

Training examples and inference prompts are both rendered here with the model's own chat template,
so the prompt a tuned model sees when asked is byte-identical to the prompt it was trained on.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, str]


def to_messages(question: str, answer: str | None, system_prompt: str | None) -> list[Message]:
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def render_prompt(tokenizer: Any, question: str, system_prompt: str | None) -> str:
    """The text a model is given when asked ``question``: everything up to the assistant's first token."""
    return tokenizer.apply_chat_template(
        to_messages(question, None, system_prompt), tokenize=False, add_generation_prompt=True
    )


def render_example(tokenizer: Any, question: str, answer: str, system_prompt: str | None) -> dict[str, str]:
    """A training example as ``prompt`` + ``completion`` (= the full ``text``).

    The completion is the answer and the end-of-turn token; whatever the template puts after that
    (Qwen and ChatML add a newline) is left out, so no loss is spent on it.
    """
    prompt = render_prompt(tokenizer, question, system_prompt)
    text = tokenizer.apply_chat_template(to_messages(question, answer, system_prompt), tokenize=False)
    if not text.startswith(prompt):
        raise ValueError(
            "the chat template renders the conversation differently from its prompt; cannot split prompt "
            "and completion for this model"
        )
    completion = text[len(prompt):].rstrip("\n")
    return {"prompt": prompt, "completion": completion, "text": prompt + completion}
