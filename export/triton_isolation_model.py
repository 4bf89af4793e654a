"""Triton Python backend: request isolation in front of a prumux-deploy engine (`prumux-deploy triton
--isolation request`).

Triton's dynamic batcher hands this model several clients' requests at once. Each request is padded to a
whole number of mux groups with copies of its own last row (isolation.py beside this file), the padded
requests are concatenated and run as one BLS request on the engine model (config parameter engine_model),
and every request gets back the logits of its own rows only. The engine model may batch these BLS requests
with each other: each holds a multiple of N rows, so a merged batch's groups still never span two requests.
A request's answer is then what the engine gives for that request alone, whatever else the server is doing.

Config parameters (string values): engine_model, num_instances, max_batch_size (of the engine model: a BLS
request never holds more rows), input names and the output name are read from the model config. Needs numpy
only; triton_python_backend_utils exists only inside the server, so it is imported in execute().
"""

import importlib.util
import json
from pathlib import Path

import numpy as np

LOGITS = "logits"


def _isolation():
    """isolation.py beside this file, as `prumux-deploy triton` writes it (Triton's Python backend does not
    put the model directory on sys.path); prumux_deploy's own where this file runs from the package."""
    beside = Path(__file__).with_name("isolation.py")
    if not beside.is_file():
        from prumux_deploy import isolation as module

        return module
    spec = importlib.util.spec_from_file_location("prumux_isolation", beside)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


isolation = _isolation()


def _pad_length(feeds: dict, length: int) -> dict:
    """Right-pad every [b, S] input to [b, length] with 0 (masked: attention_mask 0, so no logit changes)."""
    return {name: np.pad(value, ((0, 0), (0, length - value.shape[1]))) for name, value in feeds.items()}


def chunks_of_requests(padded_sizes, max_rows: int):
    """Consecutive runs of requests whose padded rows add up to at most max_rows each: [[i, ...], ...]."""
    chunk, rows = [], 0
    for i, size in enumerate(padded_sizes):
        if chunk and rows + size > max_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(i)
        rows += size
    if chunk:
        yield chunk


def answer_requests(request_feeds, run, num_instances: int, max_rows: int, mode: str = "request"):
    """Logits for each request: request_feeds [{name: int64 [b_i, S_i]}, ...] -> [float32 [b_i, C], ...].

    run(feeds {name: [B', S]}) -> logits [B', C] is one engine call (a BLS request inside Triton). With mode
    "request" no mux group holds rows of two requests; with "shared" the rows are grouped as they come."""
    N = num_instances
    sizes = [len(next(iter(f.values()))) for f in request_feeds]
    padded = [-(-s // N) * N if mode == "request" else s for s in sizes]
    answers = [None] * len(request_feeds)
    for chunk in chunks_of_requests(padded, max_rows):
        length = max(request_feeds[i][name].shape[1] for i in chunk for name in request_feeds[i])
        feeds = [_pad_length(request_feeds[i], length) for i in chunk]
        merged = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
        logits = isolation.run_isolated(run, merged, [sizes[i] for i in chunk], N, mode)
        for i, part in zip(chunk, isolation.split_requests(logits, [sizes[i] for i in chunk])):
            answers[i] = part
    return answers


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.engine_model = parameters["engine_model"]
        self.num_instances = int(parameters["num_instances"])
        self.max_rows = int(parameters["max_batch_size"])
        self.input_names = [i["name"] for i in config["input"]]

    def _feeds(self, request):
        import triton_python_backend_utils as pb_utils

        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"the request has no {name} input")
            feeds[name] = np.ascontiguousarray(tensor.as_numpy(), dtype=np.int64)
        return feeds

    def _run_engine(self, feeds):
        import triton_python_backend_utils as pb_utils

        request = pb_utils.InferenceRequest(model_name=self.engine_model, requested_output_names=[LOGITS],
                                            inputs=[pb_utils.Tensor(n, v) for n, v in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(response.error().message())
        return pb_utils.get_output_tensor_by_name(response, LOGITS).as_numpy()

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses, good, feeds = [None] * len(requests), [], []
        for i, request in enumerate(requests):
            try:
                feeds.append(self._feeds(request))
                good.append(i)
            except ValueError as e:  # one bad request fails alone, with a message for the client
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e)))
        if good:
            try:
                answers = answer_requests(feeds, self._run_engine, self.num_instances, self.max_rows)
            except Exception as e:
                answers = [e] * len(good)
            for i, answer in zip(good, answers):
                responses[i] = (pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(
                    f"engine: {answer}")) if isinstance(answer, Exception)
                    else pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(LOGITS, answer)]))
        return responses
