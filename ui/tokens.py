"""The prompt as the text encoder sees it: highlighted token spans, unknown words of the default model, and
the words cut off beyond the encoder's token limit."""
from __future__ import annotations


def token_spans(pipe, model: str, prompt: str) -> tuple[list[tuple[str, str | None]], str]:
    """(spans for gr.HighlightedText, a warning in Markdown or "")."""
    prompt = (prompt or "").strip()
    if not prompt:
        return [], ""
    tok = pipe.tokenizer
    unknown = []
    if model == "default":
        from analysis.toy.tokenizer import unknown_words

        unknown = unknown_words(tok, prompt)
    unknown_set = {w.lower() for w in unknown}
    limit = tok.model_max_length
    spans = [(tok.bos_token or "<|startoftext|>", "special")]
    count, cut = 1, []
    for word in prompt.split():
        label = "unknown word" if word.lower() in unknown_set else None
        for piece in tok.tokenize(word):
            count += 1
            text = piece.replace("</w>", "")
            # the end token takes the last place, so a prompt keeps limit - 2 tokens of its own
            if count > limit - 1:
                cut.append(text)
                label_here = "cut off"
            else:
                label_here = label
            spans += [(" ", None), (text, label_here)]
    spans += [(" ", None), (tok.eos_token or "<|endoftext|>", "special")]
    warning = ""
    if unknown:
        warning = ("⚠️ The default model has never seen " + ", ".join(f"**{w}**" for w in unknown)
                   + ": it reaches the model as single characters, so expect it to be ignored.")
    if cut:
        warning += (f" ⚠️ The text encoder keeps {limit} tokens (start and end included): the last {len(cut)} "
                    f"token(s) of this prompt are cut off and do not reach the model.")
    return spans, warning.strip()


def truncation_note(pipe, prompt: str) -> str:
    """One sentence when the prompt is longer than the text encoder's limit, else ""."""
    tok = pipe.tokenizer
    n = len(tok(prompt, truncation=False).input_ids)
    if n <= tok.model_max_length:
        return ""
    return (f"The prompt has {n} tokens; the text encoder keeps the first {tok.model_max_length} "
            f"(start and end included), so the rest does not reach the model.")
