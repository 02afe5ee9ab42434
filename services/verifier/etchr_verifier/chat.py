"""The OpenAI chat facade's reading of a chat: which image, which question, which earlier turns, which task.

Chat apps send the whole history on every turn, so (docs/api.md, "Chat apps"):

- the question is the text of the last user message;
- the image is the most recent image in the conversation: the last ``image_url`` part of the latest message
  that has one (a follow-up question without an image asks about the image shown before; of several images
  in one message the last is used, the others are ignored);
- earlier turns go to U as context, text only (their images are not resent), system messages kept;
- the task comes from the model name by the one rule (``etchr.model_names``); the suffix ``+image``
  (``etchr+image``, ``etchr-logic+image``) appends the edited image to the answer as a markdown image, so chat
  UIs show the helper view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etchr.http import ServiceError
from etchr.model_names import UnknownModel, task_for_model
from etchr.protocol.answer import AnswerResponse, ChatCompletionRequest, ChatMessage

SHOW_EDIT_SUFFIX = "+image"

# Roles whose text U sees as context; tool and function turns mean nothing to the verifier.
_CONTEXT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class ChatTurn:
    """What EVR needs from a chat."""

    task: str  # auto, none or a family id
    question: str
    image: str  # a data: URL
    image_param: str  # where it is in the request, for errors about it
    context: list[dict[str, Any]]  # earlier turns as OpenAI messages, text only
    show_edit: bool = False  # append the edited image to the answer (model name suffix ``+image``)


def read_chat(body: ChatCompletionRequest) -> ChatTurn:
    """The chat's turn to answer; a 400 naming the field (``param``) for anything EVR cannot answer."""
    show_edit = body.model.endswith(SHOW_EDIT_SUFFIX)
    try:
        task = task_for_model(body.model.removesuffix(SHOW_EDIT_SUFFIX))
    except UnknownModel as exc:
        raise ServiceError(400, "invalid_field", str(exc), param="model") from None
    users = [index for index, message in enumerate(body.messages) if message.role == "user"]
    if not users:
        raise ServiceError(400, "invalid_field", "messages hold no user message to answer", param="messages")
    last = users[-1]
    question = "\n".join(_texts(body.messages[last])).strip()
    if not question:
        where = f"messages.{last}.content"
        raise ServiceError(400, "invalid_field", "the last user message has no question text", param=where)
    image, image_param = _latest_image(body.messages)
    context = [
        converted
        for index, message in enumerate(body.messages)
        if index != last and (index < last or message.role in ("system", "developer"))
        if (converted := _as_context(message)) is not None
    ]
    return ChatTurn(
        task=task,
        question=question,
        image=image,
        image_param=image_param,
        context=context,
        show_edit=show_edit,
    )


def edit_markdown(result: AnswerResponse) -> str:
    """The edited image as a markdown image after the answer (``+image`` models); empty without an edit."""
    if result.edited_image is None:
        return ""
    caption = "helper view (used for the answer)" if result.used_edit else "helper view (not used)"
    return f"\n\n![{caption}](data:image/png;base64,{result.edited_image})"


def _texts(message: ChatMessage) -> list[str]:
    return [part.text for part in message.content or [] if part.type == "text" and part.text]


def _latest_image(messages: list[ChatMessage]) -> tuple[str, str]:
    for index in range(len(messages) - 1, -1, -1):
        parts = messages[index].content or []
        for position in range(len(parts) - 1, -1, -1):
            part = parts[position]
            if part.type == "image_url" and part.image_url is not None:
                param = f"messages.{index}.content.{position}.image_url.url"
                if not part.image_url.url.startswith("data:"):
                    raise ServiceError(
                        400,
                        "invalid_field",
                        "image_url must be a data: URL (base64); remote URLs are not fetched",
                        param=param,
                    )
                return part.image_url.url, param
    raise ServiceError(
        400,
        "invalid_field",
        "no image in the conversation: send one as an image_url content part (a data: URL) in a user message",
        param="messages",
    )


def _as_context(message: ChatMessage) -> dict[str, Any] | None:
    role = _CONTEXT_ROLES.get(message.role)
    text = "\n".join(_texts(message)).strip()
    if role is None or not text:
        return None
    return {"role": role, "content": text}
