from mna_tune.chat import (
    CHAT_TEMPLATE,
    EMPTY_THINK,
    SYSTEM_PROMPT,
    build_messages,
    render_completion,
    render_prompt,
    strip_think,
)


def test_prompt_is_qwen3_no_think_format():
    messages = build_messages("합병이란?", "두 회사가 합쳐지는 것입니다.")
    assert render_prompt(messages) == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n합병이란?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert "/no_think" not in render_prompt(messages)
    assert render_completion("두 회사가 합쳐지는 것입니다.") == "두 회사가 합쳐지는 것입니다.<|im_end|>"


def test_tokenizer_chat_template_renders_exactly_what_training_uses(qwen3_tokenizer):
    messages = build_messages("공개매수란?", "장외에서 불특정 다수에게 주식을 사겠다고 공고하는 것입니다.")
    assert qwen3_tokenizer.chat_template == CHAT_TEMPLATE
    prompt = qwen3_tokenizer.apply_chat_template(
        messages[:2], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt == render_prompt(messages)
    full = qwen3_tokenizer.apply_chat_template(messages, tokenize=False)
    assert full == render_prompt(messages) + render_completion(messages[-1]["content"]) + "\n"
    thinking = qwen3_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert not thinking.endswith(EMPTY_THINK)  # without enable_thinking=False the model may think


def test_strip_think_removes_think_blocks():
    assert strip_think("<think>\n\n</think>\n\n답입니다.") == "답입니다."
    assert strip_think("<think>생각</think>답") == "답"
    assert strip_think("답만 있습니다.") == "답만 있습니다."
