"""Local-prompt token spans and the composite text embedding."""

from __future__ import annotations

import pytest
import torch

from stmod.core.errors import PromptError
from stmod.core.tokens import TokenSpan, composite_text_embedding, find_token_spans, prompt_token_ids

GLOBAL = "Spiderman and Polar Bear in the park"


def test_spans_are_found_by_tokens(tokenizer) -> None:
    """Local prompts map to their token positions in the global prompt (0 is the start token)."""
    spans = find_token_spans(tokenizer, GLOBAL, ["spiderman", "Polar Bear", "park"])
    assert spans == (TokenSpan(1, 2), TokenSpan(3, 5), TokenSpan(7, 8))


def test_first_occurrence_is_used(tokenizer) -> None:
    """A repeated word maps to its first occurrence, as in the official code."""
    assert find_token_spans(tokenizer, "a cat and a cat", ["cat"]) == (TokenSpan(2, 3),)


def test_part_of_a_word_is_an_error_naming_it(tokenizer) -> None:
    """'man' inside 'spiderman' is not a token: the error names the prompt and the word."""
    expected = r"'man' is not a token of 'Spiderman and Polar Bear.*: it is part of the word 'spiderman'"
    with pytest.raises(PromptError, match=expected) as info:
        find_token_spans(tokenizer, GLOBAL, ["spiderman", "man"])
    assert info.value.prompt == "man"


def test_drop_gives_a_missing_prompt_no_span_and_says_so(tokenizer, caplog: pytest.LogCaptureFixture) -> None:
    """``missing="drop"`` (the official behaviour): no span for 'man', one warning naming it, others found."""
    spans = find_token_spans(tokenizer, GLOBAL, ["spiderman", "man"], missing="drop")
    assert spans[0] is not None and spans[1] is None
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "'man' is not a token of 'Spiderman and Polar Bear" in record.getMessage()
    assert "its region gets no text tokens" in record.getMessage()


@pytest.mark.parametrize(
    ("local", "reason"),
    [("dog", "the word 'dog' does not occur"), ("bear polar", "do not occur there together")],
)
def test_missing_prompt_reasons(tokenizer, local: str, reason: str) -> None:
    """Other misses say why: an absent word, or words out of order."""
    with pytest.raises(PromptError, match=reason):
        find_token_spans(tokenizer, GLOBAL, [local])


def test_empty_local_prompt_has_no_span(tokenizer) -> None:
    """An empty local prompt is allowed and gets no span (its region only takes part in self-attention)."""
    assert find_token_spans(tokenizer, GLOBAL, ["", "park"]) == (None, TokenSpan(7, 8))


def test_prompt_over_77_tokens_is_an_error(tokenizer) -> None:
    """A prompt longer than the text encoder's 77 positions is a PromptError."""
    with pytest.raises(PromptError, match="80 tokens long"):
        prompt_token_ids(tokenizer, " ".join(["cat"] * 78))
    assert len(prompt_token_ids(tokenizer, " ".join(["cat"] * 75))) == 77


def test_composite_embedding_replaces_spans_with_local_encodings() -> None:
    """Each local prompt's word embeddings replace its span; start/end/padding keep the global ones."""
    g = torch.Generator().manual_seed(0)
    global_emb = torch.randn(1, 77, 6, generator=g)
    local_a, local_b = torch.randn(1, 77, 6, generator=g), torch.randn(77, 6, generator=g)
    spans = [TokenSpan(3, 5), None, TokenSpan(7, 8)]
    out = composite_text_embedding(global_emb, [local_a, None, local_b], spans)
    assert out.shape == global_emb.shape and out is not global_emb
    assert torch.equal(out[0, 3:5], local_a[0, 1:3]) and torch.equal(out[0, 7], local_b[1])
    keep = [i for i in range(77) if i not in (3, 4, 7)]
    assert torch.equal(out[0, keep], global_emb[0, keep])
    assert not torch.equal(global_emb[0, 3:5], out[0, 3:5])  # input untouched


@pytest.mark.parametrize("preset", ["videograin", "paper"])
def test_every_text_of_an_edit_is_encoded_in_one_call(preset: str) -> None:
    """The modulator asks the text encoder once (it asked 3 + K times), each distinct text once, and gets
    what encoding each text alone gives."""
    from stmod.core.st_layout.modulator import STLayoutModulator
    from stmod.core.types import ModulationConfig, ModulationInput, Region

    generator = torch.Generator().manual_seed(0)
    table: dict[str, torch.Tensor] = {}
    calls: list[list[str]] = []

    def encode(texts):
        calls.append(list(texts))
        return torch.cat([table.setdefault(t, torch.randn(1, 77, 8, generator=generator)) for t in texts])

    regions = (Region(name="a", prompt="red cat"), Region(name="b", prompt=""), Region(name="c", prompt="red cat"))
    spans = (TokenSpan(2, 4), None, TokenSpan(2, 4))
    request = ModulationInput(masks=None, num_frames=2, latent_size=(4, 4), regions=regions, spans=spans,
                              config=ModulationConfig(preset=preset), prompt="a red cat", negative_prompt="")
    text = STLayoutModulator().text_conditioning(request, encode)
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0]))
    assert torch.equal(text.control["uncond"], table[""]) and torch.equal(text.control["cond"], table["a red cat"])
    if preset == "videograin":  # uncond: the empty prompt; cond: the composite of the local prompts
        expected = composite_text_embedding(table["a red cat"], [table["red cat"], None, table["red cat"]], spans)
        assert torch.equal(text.unet["uncond"], table[""]) and torch.equal(text.unet["cond"], expected)
    else:
        assert torch.equal(text.unet["cond"], table["a red cat"])
