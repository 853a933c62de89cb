"""Parity cases shared by the tests: a tiny BERT, inputs with padding, labels for every head."""

import numpy as np

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=3, hidden_act="gelu", hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1, pad_token_id=0, num_labels=3)
BATCH, SEQ, CHOICES = 2, 9, 3

# transformers class name -> kwargs to add to the config
HEADS = {
    "BertModel": {},
    "BertForPreTraining": {},
    "BertForMaskedLM": {},
    "BertLMHeadModel": {"is_decoder": True, "add_cross_attention": True},
    "BertForNextSentencePrediction": {},
    "BertForSequenceClassification": {},
    "BertForMultipleChoice": {},
    "BertForTokenClassification": {},
    "BertForQuestionAnswering": {"num_labels": 2},  # transformers sizes qa_outputs by num_labels
}
OUTPUTS = {"output_hidden_states": True, "output_attentions": True}


def base_inputs(seed: int = 0, shape=(BATCH, SEQ)) -> dict:
    rs = np.random.RandomState(seed)
    ids = rs.randint(1, TINY["vocab_size"], shape)
    mask = np.ones(shape, np.int64)
    mask[..., 1, SEQ - 3:] = 0  # second row (or second choice of each row) padded
    ids = np.where(mask == 1, ids, 0)
    types = np.zeros(shape, np.int64)
    types[..., SEQ // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def labels_for(model: str, inputs: dict, seed: int = 1, problem: str = "single") -> dict:
    rs = np.random.RandomState(seed)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    token_labels = np.where((rs.rand(*ids.shape) < 0.4) & (mask == 1), ids, -100)
    if model in ("BertForMaskedLM", "BertLMHeadModel"):
        return {"labels": token_labels}
    if model == "BertForPreTraining":
        return {"labels": token_labels, "next_sentence_label": rs.randint(0, 2, (BATCH,))}
    if model == "BertForNextSentencePrediction":
        return {"labels": rs.randint(0, 2, (BATCH,))}
    if model == "BertForSequenceClassification":
        if problem == "regression":
            return {"labels": rs.randn(BATCH).astype(np.float32)}
        if problem == "multi":
            return {"labels": (rs.rand(BATCH, TINY["num_labels"]) < 0.5).astype(np.float32)}
        return {"labels": rs.randint(0, TINY["num_labels"], (BATCH,))}
    if model == "BertForMultipleChoice":
        return {"labels": rs.randint(0, CHOICES, (BATCH,))}
    if model == "BertForTokenClassification":
        return {"labels": np.where(mask == 1, rs.randint(0, TINY["num_labels"], ids.shape), -100)}
    if model == "BertForQuestionAnswering":
        # the second start is out of range: clamped to SEQ and ignored, as transformers does
        return {"start_positions": np.array([2, 100]), "end_positions": np.array([5, 3])}
    return {}


def make_case(model: str, position_embedding_type: str = "absolute", name: str = None, problem: str = "single",
              extra_inputs: dict = None, config: dict = None, call_kwargs: dict = None, with_labels: bool = True
              ) -> dict:
    cfg = {**TINY, "position_embedding_type": position_embedding_type, **HEADS[model], **(config or {})}
    if model == "BertForSequenceClassification" and problem == "regression":
        cfg["num_labels"] = 1
    if model == "BertForSequenceClassification" and problem == "multi":
        cfg["problem_type"] = "multi_label_classification"
    shape = (BATCH, CHOICES, SEQ) if model == "BertForMultipleChoice" else (BATCH, SEQ)
    inputs = base_inputs(shape=shape)
    if with_labels:
        inputs.update(labels_for(model, inputs, problem=problem))
    if model == "BertLMHeadModel":
        rs = np.random.RandomState(3)
        inputs["encoder_hidden_states"] = rs.randn(BATCH, 5, TINY["hidden_size"]).astype(np.float32)
        enc_mask = np.ones((BATCH, 5), np.int64)
        enc_mask[0, 3:] = 0
        inputs["encoder_attention_mask"] = enc_mask
    inputs.update(extra_inputs or {})
    name = name or f"{model}-{position_embedding_type}-{problem}"
    return {"name": name, "model": model, "config": cfg, "seed": abs(hash(name)) % 1000,
            "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()},
            "call_kwargs": dict(OUTPUTS, **(call_kwargs or {}))}


def relative_cases() -> list:
    return [make_case(m, pos) for pos in ("relative_key", "relative_key_query") for m in HEADS]


def head_mask_cases() -> list:
    rs = np.random.RandomState(7)
    layer_head = (rs.rand(TINY["num_hidden_layers"], TINY["num_attention_heads"]) > 0.4).astype(np.float32)
    return [
        make_case("BertModel", name="head_mask_1d", extra_inputs={"head_mask": np.array([1.0, 0.0, 1.0, 0.5])}),
        make_case("BertModel", name="head_mask_2d", extra_inputs={"head_mask": layer_head}),
        make_case("BertForMaskedLM", "relative_key_query", name="head_mask_mlm_rel",
                  extra_inputs={"head_mask": layer_head}),
        make_case("BertLMHeadModel", name="head_mask_decoder", extra_inputs={"head_mask": layer_head}),
    ]


def mask_3d_case(position_embedding_type="absolute", name="mask_3d") -> dict:
    rs = np.random.RandomState(5)
    mask3 = (rs.rand(BATCH, SEQ, SEQ) < 0.7).astype(np.int64)
    mask3[:, :, 0] = 1  # every query sees at least one key
    return make_case("BertModel", position_embedding_type, name=name, extra_inputs={"attention_mask": mask3})
