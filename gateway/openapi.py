"""The OpenAPI document of the gateway's own HTTP surface, served at /openapi.json.

Built from Python data rather than kept as a file, so a test can compare its paths with the
router's and schemathesis can drive a live gateway from it.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON_ERROR = {"content": {"application/json": {"schema": _ERROR}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "OpenAI-shaped error", **_JSON_ERROR} for s in statuses}


def _completion_op(summary: str, body_ref: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": body_ref}}}},
        "responses": {
            "200": {"description": "A completion (JSON) or a stream of server-sent events",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_errors(400, 401, 403, 404, 408, 413, 415, 429, 502, 503, 504),
        },
    }


_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"type": "string"},
    "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]}}}

_COMMON = {
    "model": {"type": "string", "minLength": 1},
    "stream": {"type": "boolean"},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 16},
    "temperature": {"type": ["number", "null"]},
    "top_p": {"type": ["number", "null"]},
    "seed": {"type": ["integer", "null"]},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                       {"type": "null"}]},
    "stream_options": {"type": ["object", "null"],
                       "properties": {"include_usage": {"type": "boolean"}}},
}


def document() -> dict[str, Any]:
    health = {"responses": {"200": {"description": "OK"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "gateway", "version": __version__,
                 "description": "A gated-inference proxy in front of vLLM."},
        "paths": {
            "/v1/chat/completions": {"post": _completion_op(
                "OpenAI-compatible chat completions", "#/components/schemas/ChatRequest")},
            "/v1/completions": {"post": _completion_op(
                "OpenAI-compatible completions", "#/components/schemas/CompletionRequest")},
            "/v1/embeddings": {"post": _completion_op(
                "Embeddings, passed through", "#/components/schemas/EmbeddingRequest")},
            "/v1/models": {"get": {"summary": "Models the caller's tier may use",
                                   "security": [{"bearer": []}],
                                   "responses": {"200": {"description": "Model list", "content": {
                                       "application/json": {"schema": {"type": "object"}}}},
                                       **_errors(401, 403)}}},
            "/healthz": {"get": {"summary": "Liveness", **health}},
            "/readyz": {"get": {"summary": "Readiness", "responses": {
                "200": {"description": "Ready"}, "503": {"description": "Not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", **health}},
            "/openapi.json": {"get": {"summary": "This document", **health}},
            "/admin/v1/policy": {"get": {"summary": "Active policy version and last error",
                                         "security": [{"bearer": []}],
                                         "responses": {"200": {"description": "Status"},
                                                       **_errors(401, 403)}}},
            "/admin/v1/audit": {"get": {
                "summary": "Decision audit records, newest first",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                    for n in ("since", "until", "tier", "decision", "key_id", "limit", "cursor")],
                "responses": {"200": {"description": "A page of records"},
                              **_errors(400, 401, 403)}}},
            "/admin/v1/watermark/detect": {"post": {
                "summary": "Payloads and ledger matches in a suspect text",
                "security": [{"bearer": []}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "required": ["text"],
                               "properties": {"text": {"type": "string"}}}}}},
                "responses": {"200": {"description": "Detection report"},
                              **_errors(400, 401, 403, 408, 413)}}},
            "/admin/v1/policy/reload": {"post": {"summary": "Reload the policy files now",
                                                 "security": [{"bearer": []}],
                                                 "responses": {
                                                     "200": {"description": "Reloaded"},
                                                     "422": {"description": "Kept the old"},
                                                     **_errors(401, 403)}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object",
                              "required": ["message", "type", "param", "code"],
                              "properties": {"message": {"type": "string"},
                                             "type": {"type": "string"},
                                             "param": {"type": ["string", "null"]},
                                             "code": {"type": ["string", "null"]}}}}},
                "ChatRequest": {"type": "object", "required": ["model", "messages"],
                                "properties": {**_COMMON, "messages": {
                                    "type": "array", "minItems": 1, "items": _MESSAGE}}},
                "CompletionRequest": {"type": "object", "required": ["model", "prompt"],
                                      "properties": {**_COMMON, "prompt": {"anyOf": [
                                          {"type": "string"},
                                          {"type": "array", "items": {"type": "string"}}]}}},
                "EmbeddingRequest": {"type": "object", "required": ["model", "input"],
                                     "properties": {"model": {"type": "string"}, "input": {
                                         "anyOf": [{"type": "string"}, {"type": "array"}]}}},
            },
        },
    }
