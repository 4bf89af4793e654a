"""Triton Python backend: text -> token ids for a prumux-deploy engine (written by `prumux-deploy triton`).

Inputs TEXT (and TEXT_PAIR for sentence-pair engines), TYPE_STRING [batch, 1]; outputs input_ids,
attention_mask (and token_type_ids), TYPE_INT64 [batch, sequence], each request padded to its longest row and
truncated at the engine's max_seq_length (config.pbtxt parameter max_seq_length). The tokenizer files are in
tokenizer/ beside this file and are loaded without network access.
"""

import json
from pathlib import Path

import numpy as np

TEXT, TEXT_PAIR = "TEXT", "TEXT_PAIR"


def _input(request, name):
    """The named input of a request as a numpy array, or None (what pb_utils.get_input_tensor_by_name does)."""
    for tensor in request.inputs():
        if tensor.name() == name:
            return tensor.as_numpy()
    return None


def _strings(array):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(array).reshape(-1)]


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        config = json.loads(args["model_config"])
        self.max_length = int(config["parameters"]["max_seq_length"]["string_value"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.pair = TEXT_PAIR in self.input_names
        self.tokenizer = AutoTokenizer.from_pretrained(str(Path(__file__).resolve().parent / "tokenizer"),
                                                       local_files_only=True)

    def tokenize(self, text, text_pair=None):
        """Lists of strings -> {output name: int64 [batch, sequence]}."""
        if self.pair and (text_pair is None or len(text_pair) != len(text)):
            raise ValueError(f"{TEXT_PAIR} must have one entry per {TEXT} row")
        enc = self.tokenizer(list(text), list(text_pair) if self.pair else None, truncation=True,
                             max_length=self.max_length, padding="longest", return_tensors="np",
                             return_token_type_ids=True)
        return {name: np.ascontiguousarray(enc[name], dtype=np.int64) for name in self.output_names}

    def tokenize_request(self, request):
        text = _input(request, TEXT)
        if text is None:
            raise ValueError(f"the request has no {TEXT} input")
        pair = _input(request, TEXT_PAIR) if self.pair else None
        return self.tokenize(_strings(text), _strings(pair) if pair is not None else None)

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                arrays = self.tokenize_request(request)
            except Exception as e:  # one bad request fails alone, with a message for the client
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    f"tokenizer: {e}")))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, arrays[name]) for name in self.output_names]))
        return responses

    def finalize(self):
        self.tokenizer = None
