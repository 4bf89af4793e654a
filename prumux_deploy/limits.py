"""The bounds every config and manifest field is checked against before anything is built from it: generous
(far above any BERT's) but finite, so a hostile or mistyped file never allocates terabytes. Here, apart from
model.py, because opening an engine checks its manifest with them and needs no torch."""

CONFIG_LIMITS = {
    "vocab_size": (1, 1 << 22), "hidden_size": (1, 65536), "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024), "intermediate_size": (1, 1 << 20), "max_position_embeddings": (1, 1 << 16),
    "type_vocab_size": (1, 1024), "num_instances": (1, 1024), "num_labels": (1, 1 << 16),
    "num_hidden_demux_layers": (0, 1024), "max_seq_length": (1, 1 << 16), "pad_token_id": (0, (1 << 22) - 1),
    "mux_cls_token_id": (0, (1 << 22) - 1), "pruned_hidden_size": (1, 65536), "demux_key_size": (1, 65536),
}
LIST_LIMITS = {"layer_num_heads": (0, 1024), "layer_intermediate_size": (0, 1 << 20),
               "pre_mux_hidden_keep": (0, 65535)}  # each entry of these lists
MAX_PARAMETERS = 1 << 33  # ~8.6 billion: 32 GiB of float32 weights (BERT-large has 0.34 billion)
