"""The OpenAPI document of the gateway's own HTTP surface, served at /openapi.json.

Built from Python data rather than kept as a file, so a test can compare its paths with the
router's and schemathesis can drive a live gateway from it.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.pipeline.shape import ROLES

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_FIELDS = {"type": "object", "required": ["message", "type", "param", "code"],
                 "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]}}}
# The contract every response keeps (DESIGN.md): schemathesis checks it on each one.
_REQUEST_ID = {"x-request-id": {"required": True, "schema": {"type": "string", "minLength": 1}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "headers": _REQUEST_ID,
            "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ERROR, "OpenAI-shaped error") for s in statuses}


def _completion_op(summary: str, body: str, answer: str) -> dict[str, Any]:
    ok = _json(_ref(answer), "A completion (JSON) or a stream of server-sent events")
    ok["content"]["text/event-stream"] = {"schema": _EVENT}
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref(body)}}},
        "responses": {"200": ok, **_errors(400, 401, 403, 404, 408, 413, 415, 429, 502, 503,
                                           504)},
    }


def _admin_op(summary: str, answer: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {"summary": summary, "security": [{"bearer": []}],
            "responses": {"200": _json(answer, summary), **_errors(401, 403, *errors)}}


# One server-sent event (OpenAPI 3.1: the schema describes each event): a chunk or a
# mid-stream error as JSON, and `[DONE]` last.
_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
    {"const": "[DONE]"},
    {"type": "string", "contentMediaType": "application/json", "contentSchema": {
        "type": "object", "anyOf": [
            {"required": ["error"], "properties": {"error": _ERROR_FIELDS}},
            {"required": ["id", "object", "created", "model", "choices"],
             "properties": {"object": {"enum": ["chat.completion.chunk", "text_completion"]},
                            "choices": {"type": "array"}}}]}}]}}}

_PART = {"type": "object", "required": ["type"], "properties": {
    "type": {"type": "string"}, "text": {"type": "string"}}}
_MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"enum": sorted(ROLES)},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _PART},
                          {"type": "null"}]}}}

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


def _listing(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["object", "data"], "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": item}}}


def _completion(kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    """vLLM's answer as relayed: the fields clients read are required, extras allowed."""
    return {"type": "object", "required": ["id", "object", "created", "model", "choices"],
            "properties": {"id": {"type": "string"}, "object": {"const": kind},
                           "created": {"type": "integer"}, "model": {"type": "string"},
                           "choices": {"type": "array", "items": {
                               "type": "object", "required": ["index", *choice],
                               "properties": {"index": {"type": "integer"}, **choice}}},
                           "usage": _ref("Usage")}}


_RESPONSES = {
    "Usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
              "properties": {"prompt_tokens": {"type": "integer"},
                             "completion_tokens": {"type": "integer"},
                             "total_tokens": {"type": "integer"}}},
    "ChatCompletion": _completion("chat.completion", {"message": {
        "type": "object", "required": ["role"], "properties": {
            "role": {"const": "assistant"}, "content": {"type": ["string", "null"]}}}}),
    "Completion": _completion("text_completion", {"text": {"type": "string"}}),
    "Embeddings": {**_listing({"type": "object", "required": ["object", "index", "embedding"],
                               "properties": {"object": {"const": "embedding"},
                                              "index": {"type": "integer"},
                                              "embedding": {"type": ["array", "string"]}}}),
                   "required": ["object", "data", "model"]},
    "PolicyStatus": {"type": "object", "required": ["version", "digest", "last_error"],
                     "properties": {"version": {"type": ["string", "null"]},
                                    "digest": {"type": ["string", "null"]},
                                    "files": {"type": "array", "items": {"type": "string"}},
                                    "last_error": {"type": ["string", "null"]}}},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "gateway", "version": __version__,
                 "description": "A gated-inference proxy in front of vLLM."},
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "bearerFormat": "JWT"}},
            "schemas": {**_REQUESTS, **_RESPONSES},
        },
    }


def _paths() -> dict[str, Any]:
    status = _ref("PolicyStatus")
    return {
        "/v1/chat/completions": {"post": _completion_op(
            "OpenAI-compatible chat completions", "ChatRequest", "ChatCompletion")},
        "/v1/completions": {"post": _completion_op(
            "OpenAI-compatible completions", "CompletionRequest", "Completion")},
        "/v1/embeddings": {"post": _completion_op(
            "Embeddings, passed through", "EmbeddingRequest", "Embeddings")},
        "/v1/models": {"get": _admin_op("Models the caller's tier may use", _listing({
            "type": "object", "required": ["id", "object"],
            "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}))},
        "/v1/models/{model}": {"get": {
            **_admin_op("One model the caller's tier may use", {
                "type": "object", "required": ["id", "object"],
                "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}, 404),
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": {"type": "string"}}]}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json({
            "type": "object", "required": ["status"],
            "properties": {"status": {"const": "ok"}}}, "Alive")}}},
        "/readyz": {"get": {"summary": "Readiness", "responses": {
            "200": _json(_READINESS, "Ready"), "503": _json(_READINESS, "Not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Prometheus text format", "headers": _REQUEST_ID,
            "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({
            "type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.1")}}},
        "/admin/v1/policy": {"get": _admin_op(
            "Active policy version and last error", {
                "type": "object", "required": ["active", "directory", "tiers"],
                "properties": {"active": status, "directory": {"type": "string"},
                               "tiers": {"type": "array", "items": {"type": "string"}}}})},
        "/admin/v1/audit": {"get": {
            **_admin_op("Decision audit records, newest first", {
                "type": "object", "required": ["records", "next_cursor"],
                "properties": {"records": {"type": "array", "items": {
                                   "type": "object", "required": ["seq", "request_id", "hash"]}},
                               "next_cursor": {"type": ["string", "null"]}}}, 400),
            "parameters": [
                {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
                for n in ("since", "until", "tier", "decision", "key_id", "request_id", "limit",
                          "cursor")]}},
        "/admin/v1/watermark/detect": {"post": {
            **_admin_op("Payloads and ledger matches in a suspect text", {
                "type": "object", "required": ["payloads", "marks", "result", "attribution"],
                "properties": {"payloads": {"type": "array"}, "marks": {"type": "integer"},
                               "result": {"enum": ["payload", "payload_unconfirmed",
                                                   "ledger", "forged", "none"]},
                               "reason": {"type": "string"},
                               "attribution": {"type": ["object", "null"]}}},
                400, 408, 413, 415),
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"type": "object", "required": ["text"],
                           "properties": {"text": {"type": "string", "minLength": 1},
                                          "limit": {"type": "integer", "minimum": 1,
                                                    "maximum": 50}}}}}}}},
        "/admin/v1/policy/reload": {"post": {
            **_admin_op("Reload the policy files now", _RELOADED),
            "responses": {"200": _json(_RELOADED, "Reloaded"),
                          "422": _json(_RELOADED, "Kept the old policy"),
                          **_errors(401, 403)}}},
    }


_READINESS = {"type": "object", "required": ["ready", "checks"], "properties": {
    "ready": {"type": "boolean"},
    "checks": {"type": "object", "additionalProperties": {"type": "boolean"},
               "description": "Each true when it passes: accepting (not draining), policy, "
                              "upstream, classifier."},
    "detail": {"type": "object"}}}
_RELOADED = {"type": "object", "required": ["reloaded", "active"], "properties": {
    "reloaded": {"type": "boolean"}, "active": _ref("PolicyStatus")}}

# A prompt or embedding input given as a list: of texts, or of token ids.
_ARRAYS = ({"type": "array", "minItems": 1, "items": {"type": "string"}},
           {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}})

_REQUESTS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": _ERROR_FIELDS}},
    "ChatRequest": {"type": "object", "required": ["model", "messages"],
                    "properties": {**_COMMON, "messages": {
                        "type": "array", "minItems": 1, "items": _MESSAGE}}},
    "CompletionRequest": {"type": "object", "required": ["model", "prompt"],
                          "properties": {**_COMMON, "prompt": {"anyOf": [
                              {"type": "string"}, *_ARRAYS,
                              {"type": "array", "minItems": 1, "items": _ARRAYS[1]}]}}},
    "EmbeddingRequest": {"type": "object", "required": ["model", "input"],
                         "properties": {"model": {"type": "string", "minLength": 1},
                                        "input": {"anyOf": [
                                            {"type": "string"}, *_ARRAYS,
                                            {"type": "array", "minItems": 1,
                                             "items": _ARRAYS[1]}]}}},
}
