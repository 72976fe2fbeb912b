//! Reading chats: GET /chat/history/{chat_id} and GET /chat/list.
