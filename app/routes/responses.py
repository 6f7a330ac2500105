"""What the OpenAPI document says the model routes answer (and the upload body it accepts)."""

from __future__ import annotations

from app.schemas import ErrorDetail, ImageRequest

EVENT_STREAM = "text/event-stream"

ERROR_RESPONSES = {
    400: {"model": ErrorDetail, "description": "The model lacks the capability (the detail names its capabilities), "
                                               "or the body could not be parsed at all"},
    404: {"model": ErrorDetail, "description": "No such model; the detail names the known models"},
    413: {"model": ErrorDetail, "description": "The body is larger than max_body_bytes"},
    503: {"model": ErrorDetail, "description": "The queue is full; retry after Retry-After seconds",
          "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}},
    504: {"model": ErrorDetail, "description": "The inference took longer than the request timeout"},
}
SEED_HEADER = {"X-Seed": {"description": "the seed used (drawn at random when the request had none)",
                          "schema": {"type": "integer"}}}
IMAGE_RESPONSES = {
    200: {"description": "A PNG grid, or with ?format=json the images one by one",
          "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
          "headers": SEED_HEADER},
    **ERROR_RESPONSES,
}
ANIMATED_RESPONSES = {**IMAGE_RESPONSES, 200: {
    **IMAGE_RESPONSES[200], "description": "A PNG grid; with ?format=gif an animated GIF; with ?format=json the images",
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/gif": {"schema": {"type": "string", "format": "binary"}}}}}
PNG_RESPONSES = {**IMAGE_RESPONSES, 200: {**IMAGE_RESPONSES[200], "description": "A PNG grid"}}
SAMPLES_RESPONSES = {**IMAGE_RESPONSES, 200: {
    **IMAGE_RESPONSES[200],
    "description": "A PNG grid; with ?format=json the images one by one; with Accept: text/event-stream, "
                   "Server-Sent Events: `progress` {row, rows, image} per row (row-by-row models), then `done` {image}",
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                EVENT_STREAM: {"schema": {"type": "string"}}}}}

# The body of reconstruct, read by the route itself (JSON or multipart), so declared here.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ImageRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "a PNG or JPEG file"}}}},
}}}
