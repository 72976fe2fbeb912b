//! How a database failure becomes an [`Error`]: by constraint name for what the client caused,
//! 503 for a Postgres that cannot be reached or gave up waiting, 500 for the rest.
//!
//! It lives with the queries because the constraint names and SQLSTATEs are the store's
//! knowledge; the domain's error only carries the result (and boxes the `sqlx::Error` of a 500,
//! so nothing above the store needs sqlx to name a failure).

use crate::domain::error::Error;

/// The answer while the database cannot be reached; the cause is logged, not shown.
fn database_unavailable(cause: &dyn std::fmt::Display) -> Error {
    tracing::warn!(error = %cause, "database unavailable");
    Error::Unavailable("the database is unavailable; retry in a few seconds".into())
}

/// Whether a database error means "cannot reach Postgres now" rather than "this request is
/// wrong": no connection in time, a refused or broken connection, or a server shutting down,
/// starting up or out of connection slots (SQLSTATE class 08, 57P01–57P03, 53300).
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// `lock` or `statement` when Postgres gave up on a statement at one of the pool's
/// [`Timeouts`](super::Timeouts) (SQLSTATE 55P03 `lock_not_available`, 57014 `query_canceled`): the
/// request waited too long behind another, which a retry usually gets past.
fn timed_out(e: &sqlx::Error) -> Option<&'static str> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    match db.code().as_deref() {
        Some("55P03") => Some("lock"),
        Some("57014") => Some("statement"),
        _ => None,
    }
}

/// Constraint violations become client errors by constraint name; an unreachable database is a
/// 503; the rest are 500s.
/// This is what lets handlers INSERT and let the database decide, instead of SELECT-then-INSERT.
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::PoolTimedOut) {
            metrics::counter!("windi_db_pool_timeouts_total").increment(1);
        }
        if let sqlx::Error::Database(db) = &e {
            match db.constraint() {
                Some("users_email_key") => {
                    return Self::Conflict {
                        code: "email_taken",
                        detail: "email: already registered".into(),
                    };
                }
                // A participant deleted between the check and the insert.
                Some("chat_members_user_id_fkey") | Some("blocks_blocked_id_fkey") => {
                    return Self::NotFound("user");
                }
                // A valid token whose user is gone (e.g. the database was reset).
                Some("messages_sender_id_fkey") | Some("chats_creator_id_fkey") => {
                    return Self::Unauthorized("the token's user no longer exists");
                }
                _ => {}
            }
        }
        if let Some(kind) = timed_out(&e) {
            metrics::counter!("windi_db_timeouts_total", "kind" => kind).increment(1);
            tracing::warn!(error = %e, kind, "a statement gave up (store::Timeouts)");
            return Self::Unavailable(
                "busy: the change waited too long for its turn; nothing was changed, retry in \
                 a few seconds"
                    .into(),
            );
        }
        if is_unavailable(&e) {
            return database_unavailable(&e);
        }
        Self::Database(Box::new(e))
    }
}
