"""Stock tritonclient against a pathguard server: live/ready, metadata, and one batch.

Usage: python tritonclient_check.py HOST:PORT images.npy
Prints one JSON object: the metadata and the as_numpy outputs.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient

url, path = sys.argv[1], sys.argv[2]
client = grpcclient.InferenceServerClient(url=url)
assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
assert client.is_model_ready("pathguard"), "model not ready"
metadata = client.get_model_metadata("pathguard", as_json=True)

images = np.load(path).astype(np.float32)
inputs = [grpcclient.InferInput("images", list(images.shape), "FP32")]
inputs[0].set_data_from_numpy(images)
outputs = [grpcclient.InferRequestedOutput(name) for name in
           ("probabilities", "predicted_class", "adversarial_score", "is_adversarial")]
result = client.infer("pathguard", inputs, outputs=outputs, request_id="batch-1")

# Requested-output filtering: ask for one output only.
only = client.infer("pathguard", inputs, outputs=[grpcclient.InferRequestedOutput("adversarial_score")])
names = [o["name"] for o in only.get_response(as_json=True)["outputs"]]

# A UINT8 batch of the same pixels.
uint8 = np.round(images * 255).astype(np.uint8)
inputs8 = [grpcclient.InferInput("images", list(uint8.shape), "UINT8")]
inputs8[0].set_data_from_numpy(uint8)
classes8 = client.infer("pathguard", inputs8).as_numpy("predicted_class")

# An unknown output name is an error naming it.
try:
    client.infer("pathguard", inputs, outputs=[grpcclient.InferRequestedOutput("nope")])
    bad_output_error = ""
except Exception as e:  # tritonclient raises InferenceServerException
    bad_output_error = str(e)

# RPCs of Triton's superset that pathguard does not serve: UNIMPLEMENTED.
try:
    client.get_model_repository_index()
    unimplemented_error = ""
except Exception as e:
    unimplemented_error = str(e)

print(json.dumps({
    "metadata": metadata,
    "id": result.get_response(as_json=True).get("id", ""),
    "probabilities": result.as_numpy("probabilities").tolist(),
    "predicted_class": result.as_numpy("predicted_class").tolist(),
    "adversarial_score": result.as_numpy("adversarial_score").tolist(),
    "is_adversarial": result.as_numpy("is_adversarial").tolist(),
    "only_outputs": names,
    "uint8_predicted_class": classes8.tolist(),
    "bad_output_error": bad_output_error,
    "unimplemented_error": unimplemented_error,
}))
