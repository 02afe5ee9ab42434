"""Pydantic models for every payload: one module per surface, kept apart from serving logic.

Length limits on every free-text field, so no string the caller controls can be larger than what it is
for (images are bounded by ``ETCHR_MAX_BODY_BYTES`` and the pixel limit instead). Over-long fields are a
schema violation: 422 with the error body of docs/api.md.
"""

# A question, or a ground-truth answer: far above any benchmark's, and the editor's text encoder reads
# only its first 512 tokens anyway.
MAX_TEXT_CHARS = 8000
# Caller-chosen identifiers and model names (echoed back in responses and error messages).
MAX_NAME_CHARS = 256
# Short keywords from a fixed vocabulary that is checked later (scorer, chat role / part type, size).
MAX_KEYWORD_CHARS = 64
# Chat facade: a text part or string content of any message (system prompts can be long; only the last
# user message is read, and its question is held to MAX_TEXT_CHARS), messages per chat, parts per message.
MAX_CHAT_TEXT_CHARS = 65536
MAX_CHAT_MESSAGES = 256
MAX_CHAT_PARTS = 64

# A 16×16 red PNG: the example image in the OpenAPI schema, so a client (or schemathesis) trying the
# documented example gets a real edit / answer rather than an "invalid image" 400.
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAGklEQVR42mM8ISfHQApgYiARjGoY1TB0NAAATx8B"
    "JMixHB8AAAAASUVORK5CYII="
)
EXAMPLE_QUESTION = "Which exit does the path from the green start reach? Answer with the option letter."
