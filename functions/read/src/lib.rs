//! Read markers: PATCH /chat/message/{id}/read.
