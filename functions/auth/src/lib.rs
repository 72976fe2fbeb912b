//! Sign-up, login and the caller's profile: POST /auth/register, POST /auth/login, GET /auth/me.
