//! Group chats and their membership: POST /chat/group and the members routes.
