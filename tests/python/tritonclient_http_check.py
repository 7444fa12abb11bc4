"""Stock tritonclient.http against pathguard's REST endpoint: live/ready, metadata, and one
batch twice, once as JSON tensors and once with the binary tensor extension.

Usage: python tritonclient_http_check.py HOST:PORT images.npy
Prints one JSON object: the metadata and, per encoding, the as_numpy outputs.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient

OUTPUTS = ("probabilities", "predicted_class", "adversarial_score", "is_adversarial")

url, path = sys.argv[1], sys.argv[2]
client = httpclient.InferenceServerClient(url=url)
assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
assert client.is_model_ready("pathguard"), "model not ready"
metadata = client.get_model_metadata("pathguard")
server = client.get_server_metadata()

images = np.load(path).astype(np.float32)
results = {}
for encoding, binary in (("json", False), ("binary", True)):
    inputs = [httpclient.InferInput("images", list(images.shape), "FP32")]
    inputs[0].set_data_from_numpy(images, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in OUTPUTS]
    result = client.infer("pathguard", inputs, outputs=outputs, request_id="batch-" + encoding)
    assert result.get_response()["id"] == "batch-" + encoding, result.get_response()
    results[encoding] = {name: result.as_numpy(name).tolist() for name in OUTPUTS}

# An error answers with the server's message, not a crash.
try:
    bad = [httpclient.InferInput("images", [1, 1, 27, 28], "FP32")]
    bad[0].set_data_from_numpy(np.zeros((1, 1, 27, 28), np.float32), binary_data=False)
    client.infer("pathguard", bad)
    error = None
except Exception as e:  # tritonclient raises InferenceServerException
    error = str(e)

print(json.dumps({"metadata": metadata, "server": server, "results": results, "error": error}))
